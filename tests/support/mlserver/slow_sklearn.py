"""An MLServer runtime whose load() takes SLOW_LOAD_SECONDS (default 20)
before loading a scikit-learn model with mlserver-sklearn's own runtime:
a model that takes a while to load, as an LLM does, served by the real
MLServer (tests/it/inference.rs)."""
import asyncio
import os

from mlserver_sklearn import SKLearnModel


class SlowSKLearnModel(SKLearnModel):
    async def load(self) -> bool:
        await asyncio.sleep(float(os.environ.get("SLOW_LOAD_SECONDS", "20")))
        return await super().load()
