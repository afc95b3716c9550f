"""An MLServer runtime that doubles its input and fails a request whose
input sums below zero: a model whose requests succeed or fail as the test
chooses, served by the real MLServer with a parallel worker and adaptive
batching, so that its request outcomes and its queue histograms reach
/metrics (tests/it/inference.rs)."""
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Doubler(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        if x.sum() < 0:
            raise ValueError("the input sums below zero")
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("output", x * 2)],
        )
