"""Trains a tiny scikit-learn model and saves it where MLServer's
SKLearnModel loads it: train.py OUT_FILE (model.joblib)."""
import sys

import joblib
from sklearn.linear_model import LogisticRegression

X = [[0, 0], [1, 1], [0, 1], [1, 0], [2, 2], [0, 2]]
y = [0, 1, 0, 1, 1, 0]
joblib.dump(LogisticRegression().fit(X, y), sys.argv[1])
