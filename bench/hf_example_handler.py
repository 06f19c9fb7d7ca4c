"""The approach of TorchServe's Hugging Face example handler (``Transformer_handler_generalized``)
for ``distillserve bench``, on a TorchScript text classifier: each request is tokenized on its own
and padded to 150 tokens, the batch is the concatenation of those rows, and the answer is the top
label. Its ``encode_plus`` no longer exists in transformers 5, so the same per-request encoding is
done with the ``tokenizers`` file the archive carries. No per-request errors: a bad request
fails its batch, as in the example. Imports only TorchServe, torch and tokenizers."""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer
from ts.torch_handler.base_handler import BaseHandler

MAX_LENGTH = 150


class HuggingFaceExampleHandler(BaseHandler):
    """Per-request encode padded to 150, batch by concatenation, top label."""

    def initialize(self, context) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        self.model = torch.jit.load(str(model_dir / "model.pt"), map_location="cpu").eval()
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=MAX_LENGTH)
        self.mapping = json.loads((model_dir / "index_to_name.json").read_text())
        self.context = context
        self.initialized = True

    def preprocess(self, requests: list) -> torch.Tensor:
        rows = []
        for request in requests:
            text = request.get("data") or request.get("body")
            if isinstance(text, (bytes, bytearray)):
                text = text.decode("utf-8")
            rows.append(torch.tensor([self.tokenizer.encode(text).ids]))
        return torch.cat(rows)

    def inference(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(ids)

    def postprocess(self, logits: torch.Tensor) -> list:
        return [{"label": self.mapping[str(i)]} for i in logits.argmax(1).tolist()]
