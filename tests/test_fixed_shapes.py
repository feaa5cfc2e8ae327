"""Fixed shapes: a few input shapes reach the model, outputs come back as the unpadded input's, text stays the same."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.textscore import score
from ocrfleet.plan.models import BUNDLED_DET, BUNDLED_REC, ModelDirs, default_cache_dir, materialize
from ocrfleet.run.engine import PaddleOcrEngine
from ocrfleet.run.fixed_shapes import REC_WIDTHS, PaddedDetection, PaddedRecognition, det_sides

REAL = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "real"


class Session:
    """An onnxruntime-like session: detection maps are channel 0; recognition marks each time step's column."""

    def __init__(self, shapes):
        self.shapes = shapes

    def get_inputs(self):
        return [type("Input", (), {"name": "x"})]

    def run(self, names, feeds):
        batch = feeds["x"]
        self.shapes.append(batch.shape)
        if batch.shape[2] != 48:
            return [batch[:, :1].copy()]
        steps = batch[:, 0, 0, ::8]  # (lines, time steps): the first pixel under each step
        return [np.repeat(steps[:, :, None], 5, axis=2)]


class Runner:
    """PaddleX's ONNXRuntimeRunner as the wrappers see it: a callable that can make more sessions."""

    def __init__(self):
        self.shapes, self.sessions = [], 0

    def _create_session(self):
        self.sessions += 1
        return Session(self.shapes)


@pytest.mark.parametrize("height, width, canvas", [(960, 672, (960, 736)), (672, 960, (736, 960)),
                                                   (480, 864, (736, 960)), (960, 960, (960, 960))])
def test_a_page_runs_on_a_fixed_canvas_and_its_map_comes_back_at_its_own_size(height, width, canvas):
    runner = Runner()
    page = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    (prediction,) = PaddedDetection(runner, det_sides(960))([page])
    assert runner.shapes == [(1, 3, *canvas)] and np.array_equal(prediction, page[:, :1])


def test_lines_run_at_their_width_class_and_batch_size_and_decode_only_their_own_time_steps():
    runner = Runner()
    recognition = PaddedRecognition(runner, batch=4)
    lines = np.ones((6, 3, 48, 347), np.float32)
    (output,) = recognition(x=[lines])
    assert runner.shapes == [(4, 3, 48, 480), (4, 3, 48, 480)] and runner.sessions == 1
    assert output.shape == (6, 44, 5) and (output == 1).all()  # ceil(347 / 8) steps, none of the padding's
    recognition([np.ones((2, 3, 48, 320), np.float32)])
    assert runner.shapes[-1] == (4, 3, 48, 320) and runner.sessions == 2  # one session per shape
    assert REC_WIDTHS[0] == 320 and REC_WIDTHS[-1] == 3200  # PaddleOCR's narrowest and widest line


def test_a_runner_without_sessions_is_called_with_the_padded_input():
    seen = []
    PaddedDetection(lambda x: seen.append(x[0].shape) or [x[0][:, :1]], det_sides(960))([np.zeros((1, 3, 64, 96))])
    assert seen == [(1, 3, 736, 736)]


def bundled_onnx_models() -> ModelDirs:
    cache = default_cache_dir()
    return ModelDirs(engine="onnxruntime", text_detection_model_name=BUNDLED_DET,
                     text_detection_model_dir=str(materialize("onnxruntime", BUNDLED_DET, cache)),
                     text_recognition_model_name=BUNDLED_REC,
                     text_recognition_model_dir=str(materialize("onnxruntime", BUNDLED_REC, cache)))


@pytest.fixture(scope="module")
def onnx_models() -> ModelDirs:
    return bundled_onnx_models()


def test_fixed_shape_batching_reads_real_pages_as_the_unbatched_path_does(onnx_models):
    unbatched = PaddleOcrEngine(onnx_models, "cpu", 1)
    fixed = PaddleOcrEngine(onnx_models, "cpu", 1, rec_batch_size=16, fixed_shapes=True)
    errors, chars = {"unbatched": 0.0, "fixed": 0.0}, 0
    for name in ("eurotext.png", "typewriter-recipe.png"):
        image = cv2.imread(str(REAL / name))
        printed = [line for line in (REAL / name).with_suffix(".gt.txt").read_text().splitlines() if line.strip()]
        chars += len("".join(printed))
        for key, engine in (("unbatched", unbatched), ("fixed", fixed)):
            errors[key] += (100 - score(printed, [line.text for line in engine(image)])["chars"]) / 100 * \
                len("".join(printed))
    pipeline = fixed._ocr.paddlex_pipeline._pipeline
    assert set(pipeline.text_det_model.runner._sessions) <= {(1, 3, h, w) for h in (736, 960) for w in (736, 960)}
    assert {shape[0] for shape in pipeline.text_rec_model.runner._sessions} == {16}
    assert abs(errors["fixed"] - errors["unbatched"]) / chars <= 0.002
