"""An MLServer runtime running an ONNX model with onnxruntime (runs in the MLServer peer venv).

MLServer 1.7 ships no ONNX runtime of its own; this is the small custom
runtime its documentation describes for such cases.  It mirrors the other
servers of the benchmark: one session, one intra-op thread, and the batch
MLServer's adaptive batcher assembled is run in one call.

``model-settings.json`` names it as ``mlserver_runtime.OnnxModel`` with
``parameters.uri`` pointing at the ``.onnx`` file and, optionally,
``parameters.extra.intra_op_threads``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

__all__ = ["OnnxModel"]


class OnnxModel(MLModel):  # type: ignore[misc]
    """Run one ONNX model; inputs and outputs keep the model's own tensor names."""

    async def load(self) -> bool:
        """Open the session named by ``parameters.uri``."""
        path = await get_model_uri(self.settings)
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input_names = {i.name for i in self._session.get_inputs()}
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Decode the inputs as numpy arrays, run the session, encode every output."""
        feeds: dict[str, np.ndarray] = {}
        for request_input in payload.inputs:
            if request_input.name not in self._input_names:
                raise MLServerError(f"unknown input {request_input.name!r}", status_code=400)
            feeds[request_input.name] = NumpyCodec.decode_input(request_input)
        results = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self._output_names, results, strict=True)
            ],
        )
