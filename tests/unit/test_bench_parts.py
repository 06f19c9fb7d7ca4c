"""Pieces of ``distillserve bench`` that need no server: the multi-image request it sends, how a
worker profile's stacks are sorted, and the targets its comparisons are judged by."""

import io

from PIL import Image

from distillserve.bench.alternatives import v2_images_request
from distillserve.bench.profile import WAITING, categorise
from distillserve.bench.report_compare import comparison_targets
from distillserve.handlers.kserve_v2 import bytes_element, first_input, v2_payload

WORKER = (
    "<module> (ts/model_service_worker.py:301);"
    "TorchModelServiceWorker.handle_connection (ts/model_service_worker.py:185)"
)
HANDLE = WORKER + ";Service.predict (ts/service.py:135);BaseHandler.handle (ts/base_handler.py:4)"


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), value).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_multi_image_request_is_what_the_handler_reads_as_n_images():
    images = [_png(v) for v in (0, 100, 200)]
    request = v2_payload({"body": v2_images_request(images)})
    tensor = first_input(request)
    assert tensor.datatype == "BYTES" and tensor.shape == [3]
    assert [bytes_element(v, tensor.binary) for v in tensor.values] == images


def test_stacks_fall_in_the_category_of_their_innermost_named_frame():
    wait = WORKER + ";retrieve_msg (ts/protocol/otf_message_handler.py:36);"
    wait += "_retrieve_buffer (ts/protocol/otf_message_handler.py:184)"
    assert categorise(wait) == WAITING
    decode = HANDLE + ";Handler.preprocess (distill_classifier.py:1);"
    decode += "decode_image (imageprep.py:130);ImageFile.load (PIL/ImageFile.py:2)"
    assert categorise(decode) == "decode"
    metrics = HANDLE + ";Handler.preprocess (distill_classifier.py:1);"
    metrics += "Handler._add_metric (distill_classifier.py:269);emit (logging/__init__.py:1)"
    assert categorise(metrics) == "metrics"
    forward = HANDLE + ";Handler.inference (distill_classifier.py:187);Runtime.__call__ (r.py:3)"
    assert categorise(forward) == "forward"
    answer = HANDLE + ";Handler.postprocess (distill_classifier.py:2);ranked (classification.py:1)"
    assert categorise(answer) == "answer"
    assert categorise(WORKER + ";create_predict_response (ts/service.py:9)") == (
        "TorchServe protocol"
    )
    assert categorise("<module> (elsewhere.py:1)") == "other"


def test_comparison_targets_take_the_lowest_ratio_over_concurrencies():
    row = {"model": "mobilenetv3-int8", "images": "640x480 JPEG", "workers": 2}
    results = {
        "builtin": [
            {**row, "concurrency": 16, "ratio": 2.4},
            {**row, "concurrency": 32, "ratio": 1.9},
            {**row, "images": "1280x960 JPEG", "concurrency": 32, "ratio": 1.0},
        ],
        "product": [
            {"who": "built-in handler, fp32 ResNet-50", "images": "640x480 JPEG"},
            *(
                {
                    "who": f"ours, {name}",
                    "images": "640x480 JPEG",
                    "concurrency": c,
                    "vs_builtin_resnet50": ratio,
                }
                for name, c, ratio in (
                    ("resnet18-int8", 16, 3.0),
                    ("mobilenetv3-int8", 16, 12.0),
                    ("mobilenetv3-int8", 32, 11.0),
                )
            ),
        ],
    }
    targets = comparison_targets(results)
    assert targets["builtin_640"]["value"] == 1.9  # not the 1280x960 row, not the best one
    assert targets["product"]["value"] == 11.0  # MobileNetV3, the lower concurrency's ratio
    assert "mobilenetv3-int8" in targets["product"]["what"]
