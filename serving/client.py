"""gRPC and REST clients for an exported tf_volpose model behind TF Serving.

    python serving/client.py --server=localhost:8500 --model=volpose --image=IMG [--box=x,y,w,h] \
        [--focal=fx,fy]
    python serving/client.py --server=localhost:8501 --model=volpose --image=IMG --rest

gRPC uses ``PredictionServiceStub`` (Predict, GetModelMetadata) and
``ModelServiceStub`` (GetModelStatus) with a deadline per call and retries with
exponential backoff on UNAVAILABLE; REST posts ``{"instances": [{"image_bytes":
{"b64": ...}, "box": [...]}]}`` to ``/v1/models/<name>:predict``.
"""

import base64
import http.client
import json
import time
import urllib.error
import urllib.request

# TensorFlow's C++ INFO records off unless TF_CPP_MIN_LOG_LEVEL says otherwise, those it
# writes while it loads included; this must come before TensorFlow loads (tools/_cli.py
# does the same for the tools)
from tf_volpose import _startup

_startup.import_tensorflow_quietly()

import grpc
import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tf_volpose import _files, camera, crop

JOINT_NAMES = ("pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine",
               "thorax", "neck", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder",
               "r_elbow", "r_wrist")


class ServingError(RuntimeError):
    """A failed call, with the gRPC status code name (or HTTP status) and the server's message."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


def _attempts(last):
    """`` (after N attempts)`` for a call that failed on attempt ``last`` (from 0)."""
    return f" (after {last + 1} attempts)" if last else ""


class GrpcClient:
    """Calls a TF Serving (or ``serving/server.py``) gRPC endpoint.

    Args:
      server: ``host:port``.
      model: model name.
      timeout: deadline per call, seconds.
      retries: attempts after an UNAVAILABLE answer (backoff 0.2 s, doubling).
      max_message_mb: receive limit (raise it for the ``heatmaps`` signature).
    """

    def __init__(self, server, model="volpose", timeout=30.0, retries=4, max_message_mb=64):
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.channel = grpc.insecure_channel(server, options=[
            ("grpc.max_receive_message_length", max_message_mb << 20),
            ("grpc.max_send_message_length", max_message_mb << 20)])
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _call(self, method, request):
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                unavailable = e.code() == grpc.StatusCode.UNAVAILABLE
                if unavailable and attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                details = e.details() + (_attempts(attempt) if unavailable else "")
                raise ServingError(e.code().name, details) from None

    def predict(self, image_bytes, box, signature="serving_default", focal=None, principal=None):
        """One image -> dict of NumPy outputs (batch dimension removed)."""
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=self.model, signature_name=signature))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image_bytes]))
        request.inputs["box"].CopyFrom(tf.make_tensor_proto([box], dtype=tf.float32))
        if focal is not None:
            request.inputs["focal"].CopyFrom(tf.make_tensor_proto([focal], dtype=tf.float32))
            request.inputs["principal_point"].CopyFrom(
                tf.make_tensor_proto([principal], dtype=tf.float32))
        response = self._call(self.predictions.Predict, request)
        return {k: tf.make_ndarray(v)[0] for k, v in response.outputs.items()}

    def metadata(self):
        """Signature name -> SignatureDef."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name=self.model), metadata_field=["signature_def"])
        response = self._call(self.predictions.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return dict(signatures.signature_def)

    def status(self):
        """List of ``(version, state name)``."""
        request = get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name=self.model))
        response = self._call(self.models.GetModelStatus, request)
        return [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state))
                for s in response.model_version_status]

    def wait_until_available(self, timeout=120.0, process=None):
        """Polls GetModelStatus until the model answers (e.g. a server that is starting).

        Raises ServingError after ``timeout`` seconds, or at once if ``process`` (a
        ``subprocess.Popen`` of the server) has exited.
        """
        deadline = time.time() + timeout
        while True:
            try:
                return self.status()
            except ServingError:
                if process is not None and process.poll() is not None:
                    raise ServingError("UNAVAILABLE", f"server exited with {process.returncode}")
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def close(self):
        self.channel.close()


class RestClient:
    """Calls TF Serving's REST API (``/v1/models/<name>:predict``)."""

    def __init__(self, server, model="volpose", timeout=30.0, retries=4):
        self.server = server
        self.url = f"http://{server}/v1/models/{model}:predict"
        self.timeout = timeout
        self.retries = retries

    def predict(self, image_bytes, box, signature="serving_default", focal=None, principal=None):
        """One image -> dict of NumPy outputs; ``focal`` and ``principal`` (px, 2 numbers
        each) go with the ``with_intrinsics`` signature."""
        instance = {"image_bytes": {"b64": base64.b64encode(image_bytes).decode()},
                    "box": list(box)}
        if focal is not None:
            instance.update(focal=list(focal), principal_point=list(principal))
        body = json.dumps({"signature_name": signature, "instances": [instance]}).encode()
        delay = 0.2
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    data = json.loads(response.read())
                break
            except urllib.error.HTTPError as e:
                try:
                    message = json.loads(e.read()).get("error", "")
                except ValueError:
                    message = e.reason
                raise ServingError(f"HTTP {e.code}", message) from None
            # OSError before HTTPException: RemoteDisconnected (a server that closed without
            # answering, e.g. restarting) is both, and is retried as UNAVAILABLE
            except OSError as e:  # no connection (URLError), or no answer in time
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                if isinstance(reason, TimeoutError):  # as gRPC's deadline: not retried
                    raise ServingError("DEADLINE_EXCEEDED", f"{self.url}: no answer within "
                                       f"{self.timeout:g} s") from None
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                reason = _files.error_reason(reason) if isinstance(reason, OSError) else reason
                raise ServingError("UNAVAILABLE", f"{self.url}: {reason}{_attempts(attempt)}"
                                   ) from None
            except http.client.HTTPException as e:  # an answer, not HTTP: a gRPC port?
                raise ServingError("UNAVAILABLE", f"{self.url}: the answer is not HTTP "
                                   f"({type(e).__name__}): is {self.server} a gRPC port? TF "
                                   f"Serving answers REST on its --rest_api_port") from None
        return {k: np.asarray(v) for k, v in data["predictions"][0].items()}


def format_joints(outputs):
    lines = [f"{'joint':<11} {'X mm':>9} {'Y mm':>9} {'Z mm':>9} {'u px':>8} {'v px':>8} {'conf':>6}"]
    for name, xyz, uv, c in zip(JOINT_NAMES, outputs["joints_3d_mm"], outputs["joints_2d_px"],
                                outputs["confidence"]):
        lines.append(f"{name:<11} {xyz[0]:9.1f} {xyz[1]:9.1f} {xyz[2]:9.1f} {uv[0]:8.1f} "
                     f"{uv[1]:8.1f} {c:6.3f}")
    return "\n".join(lines)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    try:
        # the server decodes the bytes as stored: send phone photos (EXIF-rotated) upright
        data, image = crop.read_upright_image(FLAGS.image)
        # checked here too: behind TF Serving's batching a request the graph rejects
        # also fails the requests batched with it (serving/README.md)
        box = crop.xywh_or_whole_image(FLAGS.box, (image.shape[1], image.shape[0]))
        focal = camera.focal_lengths(FLAGS.focal) if FLAGS.focal else None
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {_files.error_message(e)}") from None
    # a calibrated camera: the with_intrinsics signature, principal point at the image centre
    # (as tools/predict.py does)
    calibrated = dict(signature="with_intrinsics", focal=focal,
                      principal=[image.shape[1] / 2.0, image.shape[0] / 2.0]) if focal else {}
    try:
        if FLAGS.rest:
            outputs = RestClient(FLAGS.server, FLAGS.model, FLAGS.timeout).predict(
                data, box, **calibrated)
        else:
            client = GrpcClient(FLAGS.server, FLAGS.model, FLAGS.timeout)
            print("model status:", client.status())
            outputs = client.predict(data, box, **calibrated)
    except ServingError as e:
        raise SystemExit(f"error: {e}")
    print(format_joints(outputs))


if __name__ == "__main__":
    flags.DEFINE_string("server", "localhost:8500", "host:port (gRPC, or REST with --rest).")
    flags.DEFINE_string("model", "volpose", "Model name.")
    flags.DEFINE_string("image", None, "JPEG or PNG file.")
    flags.DEFINE_list("box", None, "x,y,w,h px (default: the whole image).")
    flags.DEFINE_list("focal", None, "fx,fy px of a calibrated camera: the with_intrinsics "
                      "signature, principal point at the image centre (default: the export's "
                      "documented field of view).")
    flags.DEFINE_bool("rest", False, "Use the REST API instead of gRPC.")
    flags.DEFINE_float("timeout", 30.0, "Deadline per call, seconds.")
    # a deadline of 0 or less fails every call as DEADLINE_EXCEEDED, which reads as a slow server
    flags.register_validator("timeout", lambda seconds: seconds > 0,
                             "--timeout must be a positive number of seconds")
    flags.mark_flag_as_required("image")
    app.run(main)
