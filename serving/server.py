"""A local server speaking TF Serving's gRPC API (and its REST predict endpoint).

For development and tests where ``tensorflow_model_server`` cannot be
installed. It uses the same ``tensorflow_serving.apis`` protos, serves the
newest numeric version under ``--model_base_path`` (and, as TF Serving does,
a newer one as soon as it appears there), and maps errors as TF
Serving does: unknown model or version -> NOT_FOUND, unknown signature ->
FAILED_PRECONDITION, undecodable or out-of-range input -> INVALID_ARGUMENT.
It keeps serving after any bad request, bounds concurrent inference
(``--max_concurrent``), and refuses, before decoding anything, images above
``--max_pixels`` (read from their header) and batches above ``--max_batch_size``
images (a batch is decoded, cropped and run at once: thousands of tiny JPEGs in
one request would otherwise take the process's memory); REST bodies above
``MAX_REQUEST_BYTES``, gRPC's receive limit here, get HTTP 413 unread. REST predict
takes both of TF Serving's body formats, ``instances`` (rows) and ``inputs`` (columns).

    python serving/server.py --model_base_path=exports/volpose --model_name=volpose --port=8500 \
        [--rest_port=8501]
"""

import base64
import concurrent.futures
import http.server
import json
import os
import struct
import threading

# TensorFlow's C++ INFO records off unless TF_CPP_MIN_LOG_LEVEL says otherwise, those it
# writes while it loads included; this must come before TensorFlow loads (tools/_cli.py
# does the same for the tools)
from tf_volpose import _startup

_startup.import_tensorflow_quietly()

import grpc
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tf_volpose import _files

FLAGS = flags.FLAGS
flags.DEFINE_string("model_base_path", "exports/volpose", "Directory of numeric versions.")
flags.DEFINE_string("model_name", "volpose", "Model name clients ask for.")
flags.DEFINE_integer("port", 8500, "gRPC port.")
flags.DEFINE_integer("rest_port", 0, "REST port (0: no REST endpoint).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind.")
flags.DEFINE_integer("max_concurrent", 2, "Inference calls running at once.")
flags.DEFINE_integer("max_pixels", 40_000_000, "Largest accepted image (width x height).")
flags.DEFINE_integer("max_batch_size", 64, "Most images accepted in one request.")
flags.DEFINE_float("file_system_poll_wait_seconds", 1.0,
                   "Seconds between looks for a newer version under --model_base_path, which "
                   "is then served (TF Serving's flag and default); 0: never look again.",
                   lower_bound=0.0)

# the largest request either front end reads (gRPC's receive limit, REST's body)
MAX_REQUEST_BYTES = 64 << 20


class RequestError(Exception):
    """A request the server refuses; carries the gRPC status code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def short_error(message):
    """A TF op error's own message, without the graph-execution wrapper around it.

    TF 2.21 reports a failing op as ``Graph execution error: / Detected at node N
    defined at ...: / <stack traces unavailable> / MESSAGE / [[{{node N}}]] [Op:...]``;
    a client needs MESSAGE (e.g. the failing check's ``box width and height must be
    positive``). Text of another shape is returned as it is.
    """
    kept = [line.strip() for line in message.splitlines()
            if line.strip() and not line.lstrip().startswith("[[")
            and not line.startswith(("Graph execution error", "Detected at node",
                                     "<stack traces", "  File "))]
    return " ".join(kept) or message


def image_size(data):
    """``(width, height)`` from a JPEG or PNG header, without decoding the pixels."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        try:
            height, width, _ = tf.io.extract_jpeg_shape(data).numpy()
        except tf.errors.InvalidArgumentError as e:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"image_bytes is not a decodable JPEG: {e.message}") from None
        return int(width), int(height)
    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "image_bytes is not a JPEG or PNG image")


def _is_url(path):
    return "://" in path


def _directory_listing(path):
    """``(relative path, size, mtime)`` of every file under ``path``: it changes while a
    copy is in progress. Local or on any file system ``tf.io.gfile`` reads."""
    listing = []
    for root, _, names in tf.io.gfile.walk(path):
        for name in names:
            file_path = os.path.join(root, name)
            stat = tf.io.gfile.stat(file_path)
            listing.append((os.path.relpath(file_path, path), stat.length, stat.mtime_nsec))
    return sorted(listing)


def newest_version(base_path):
    """The highest numeric version under ``base_path`` (local, or a URL as TF Serving
    reads one: ``gs://``, ``s3://`` with tensorflow-io).

    Raises:
      ValueError: there is none (with what ``base_path`` is instead).
      OSError: its file system cannot be asked (an unknown scheme, no network).
    """
    try:
        names = tf.io.gfile.listdir(base_path) if tf.io.gfile.isdir(base_path) else []
        is_version = tf.io.gfile.exists(os.path.join(base_path, "saved_model.pb"))
        exists = is_version or bool(names) or tf.io.gfile.exists(base_path)
    except tf.errors.OpError as e:
        raise OSError(f"--model_base_path {base_path!r} cannot be reached: "
                      f"{short_error(e.message)}") from e
    versions = sorted(int(name.rstrip("/")) for name in names if name.rstrip("/").isdigit())
    if not versions:
        hint = ""
        if is_version:  # a common slip
            parent = (base_path.rstrip("/").rsplit("/", 1)[0] if _is_url(base_path)
                      else os.path.dirname(os.path.abspath(base_path)))
            hint = f": it is a version itself; give its parent, --model_base_path={parent}"
        elif not exists:
            hint = ": it does not exist"
        raise ValueError(f"no numeric version directory under {base_path!r}{hint}")
    return versions[-1]


class Servable:
    """One loaded version: its number, path, signatures and their protos."""

    def __init__(self, base_path, version):
        self.version = version
        self.path = os.path.join(base_path, str(version))
        self.loaded = tf.saved_model.load(self.path)  # kept: the signatures use its variables
        self.signatures = dict(self.loaded.signatures)
        proto = saved_model_pb2.SavedModel()
        with tf.io.gfile.GFile(os.path.join(self.path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        self.signature_defs = proto.meta_graphs[0].signature_def


class ModelServer:
    """Serves the newest version and answers requests (shared by the gRPC and REST front ends).

    :meth:`reload_newest` (called every ``--file_system_poll_wait_seconds``, as TF Serving
    polls) loads a newer version when one appears and serves it from the next request on;
    requests in flight finish on the version they started with.
    """

    def __init__(self, base_path, name, max_concurrent=2, max_pixels=40_000_000,
                 max_batch_size=64):
        # 0 concurrent calls would hang every request; 0 pixels or images refuse them all
        for flag, value in (("max_concurrent", max_concurrent), ("max_pixels", max_pixels),
                            ("max_batch_size", max_batch_size)):
            if int(value) != value or value < 1:
                raise ValueError(f"--{flag} must be a positive integer, got {value!r}")
        self.name = name
        self.base_path = base_path
        self.servable = Servable(base_path, newest_version(base_path))
        self.max_pixels = int(max_pixels)
        self.max_batch_size = int(max_batch_size)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._failed = {}  # version -> the directory's listing when it failed to load

    @property
    def version(self):
        return self.servable.version

    @property
    def path(self):
        return self.servable.path

    def reload_newest(self):
        """Loads the newest version under the base path if it is newer than the one served.

        Returns a line saying what changed, or None. A version that fails to load is
        reported and tried again only once its directory changes (a copy still in
        progress); the one served keeps serving. ``export.export_saved_model`` renames a
        finished directory into place, so its versions appear whole.
        """
        try:
            newest = newest_version(self.base_path)
        except ValueError:  # the versions were removed: keep serving the loaded one
            return None
        if newest <= self.version:
            return None
        try:
            listing = _directory_listing(os.path.join(self.base_path, str(newest)))
        except (OSError, tf.errors.OpError):
            return None  # files vanishing under the walk: being written, look again later
        if self._failed.get(newest) == listing:
            return None
        try:
            servable = Servable(self.base_path, newest)
        except Exception as e:  # any unloadable directory: keep serving
            self._failed[newest] = listing
            return (f"warning: version {newest} under {self.base_path} does not load "
                    f"({type(e).__name__}: {short_error(str(e))[:300]}); still serving "
                    f"version {self.version}")
        self.servable = servable  # one reference swap; requests in flight hold the old one
        return f"serving {self.name} version {newest} from {servable.path}"

    def check_model(self, spec, servable=None):
        """NOT_FOUND unless ``spec`` names this model and (if it names one) the version of
        ``servable`` (default: the one served now)."""
        servable = servable or self.servable
        if spec.name != self.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version") and spec.version.value != servable.version:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({spec.name}, "
                               f"{spec.version.value})")

    def run(self, signature_name, inputs, servable=None):
        """Runs a signature of ``servable`` (default: the version served now) on NumPy
        inputs; returns a dict of NumPy outputs."""
        servable = servable or self.servable
        signature_name = signature_name or "serving_default"
        if signature_name not in servable.signatures:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature name: \"{signature_name}\" not found in "
                               f"signature def; known: {sorted(servable.signatures)}")
        fn = servable.signatures[signature_name]
        spec = fn.structured_input_signature[1]
        if set(inputs) != set(spec):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"inputs must be {sorted(spec)}, got {sorted(inputs)}")
        tensors = {}
        for key, value in inputs.items():
            try:
                tensors[key] = tf.convert_to_tensor(value, dtype=spec[key].dtype)
            except (TypeError, ValueError) as e:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {key}: expected {spec[key].dtype.name}: {e}") from None
            if not spec[key].shape.is_compatible_with(tensors[key].shape):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {key}: expected shape {spec[key].shape}, "
                                   f"got {tensors[key].shape}")
        if "image_bytes" in tensors:
            images = tensors["image_bytes"].numpy().reshape(-1)
            if len(images) > self.max_batch_size:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"a batch of {len(images)} images is above the limit of "
                                   f"{self.max_batch_size} per request")
            for data in images:
                width, height = image_size(data)
                if width * height > self.max_pixels:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"image of {width}x{height} px is above the limit of "
                                       f"{self.max_pixels} pixels")
        with self._slots:
            try:
                outputs = fn(**tensors)
            except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   short_error(e.message)) from None
        return {k: v.numpy() for k, v in outputs.items()}

    def status_response(self):
        """What GetModelStatus answers: the served version, AVAILABLE."""
        status = get_model_status_pb2.ModelVersionStatus(
            version=self.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        status.status.SetInParent()  # error_code OK, as TF Serving fills it
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[status])

    def signature_map(self):
        """What GetModelMetadata answers under ``signature_def``."""
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        return signature_map

    def model_spec(self, signature_name="", version=None):
        spec = model_pb2.ModelSpec(name=self.name, signature_name=signature_name)
        spec.version.value = self.version if version is None else version
        return spec


def _check_model_or_abort(server, spec, context):
    try:
        server.check_model(spec)
    except RequestError as e:
        context.abort(e.code, str(e))


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server):
        self.server = server

    def Predict(self, request, context):
        servable = self.server.servable  # this request's version, whatever a reload does
        try:
            self.server.check_model(request.model_spec, servable)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = self.server.run(request.model_spec.signature_name, inputs, servable)
        except RequestError as e:
            context.abort(e.code, str(e))
        except Exception as e:  # keep serving whatever happens
            logging.exception("Predict failed")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        wanted = set(request.output_filter) or set(outputs)
        unknown = sorted(wanted - set(outputs))
        if unknown:  # TF Serving's answer to an output_filter naming no output
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"output tensor alias not found in signature: {unknown[0]} Outputs "
                          f"expected to be in the set {{{','.join(sorted(outputs))}}}.")
        response = predict_pb2.PredictResponse(
            model_spec=self.server.model_spec(request.model_spec.signature_name or "serving_default",
                                              servable.version))
        for key in wanted & set(outputs):
            response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
        return response

    def GetModelMetadata(self, request, context):
        _check_model_or_abort(self.server, request.model_spec, context)
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "metadata_field must contain exactly signature_def")
        response = get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=self.server.model_spec())
        response.metadata["signature_def"].Pack(self.server.signature_map())
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server):
        self.server = server

    def GetModelStatus(self, request, context):
        _check_model_or_abort(self.server, request.model_spec, context)
        return self.server.status_response()


def _rest_handler(server):
    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            """Model status (``/v1/models/<name>[/versions/<n>]``) and metadata (the same
            ``+ /metadata``), as TF Serving's REST API answers them."""
            parts = self.path.rstrip("/").split("/")
            metadata = parts[-1] == "metadata"
            parts = parts[:-1] if metadata else parts
            if parts[:3] != ["", "v1", "models"] or len(parts) not in (4, 6) or (
                    len(parts) == 6 and (parts[4] != "versions" or not parts[5].isdigit())):
                return self._reply(404, {"error": f"unknown path {self.path}"})
            spec = model_pb2.ModelSpec(name=parts[3])
            if len(parts) == 6:
                spec.version.value = int(parts[5])
            try:
                server.check_model(spec)
            except RequestError as e:
                return self._reply(404, {"error": str(e)})
            if metadata:
                return self._reply(200, {
                    "model_spec": _as_json(server.model_spec()),
                    "metadata": {"signature_def": _as_json(server.signature_map())}})
            return self._reply(200, _as_json(server.status_response()))

        def do_POST(self):
            prefix = f"/v1/models/{server.name}"
            if not self.path.startswith("/v1/models/") or not self.path.endswith(":predict"):
                return self._reply(404, {"error": f"unknown path {self.path}"})
            if not self.path.startswith(prefix + ":") and not self.path.startswith(prefix + "/"):
                return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
            try:
                length = int(self.headers.get("Content-Length", 0))
                if length < 0:  # read(-1) would wait for the client to close
                    raise ValueError(f"Content-Length {length} is negative")
                if length > MAX_REQUEST_BYTES:
                    self.close_connection = True  # the body is left unread
                    return self._reply(413, {"error": f"request body of {length} bytes is above "
                                                      f"the limit of {MAX_REQUEST_BYTES}"})
                body = json.loads(self.rfile.read(length))
                inputs, columnar = _rest_inputs(body)
                outputs = server.run(body.get("signature_name", ""),
                                     {k: np.array(v) for k, v in inputs.items()})
            except RequestError as e:
                return self._reply(404 if e.code == grpc.StatusCode.NOT_FOUND else 400,
                                   {"error": str(e)})
            except KeyError as e:
                return self._reply(400, {"error": f"malformed request: no {e} given"})
            except (ValueError, IndexError, TypeError) as e:
                return self._reply(400, {"error": f"malformed request: {e}"})
            if columnar:
                return self._reply(200, {"outputs": {k: v.tolist() for k, v in outputs.items()}})
            n = len(next(iter(inputs.values())))
            predictions = [{k: v[i].tolist() for k, v in outputs.items()} for i in range(n)]
            return self._reply(200, {"predictions": predictions})

        def log_message(self, *args):
            pass

    return Handler


def _as_json(message):
    """A proto as TF Serving's REST API writes it (field names kept, defaults included)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _rest_inputs(body):
    """``(name -> list over the batch, columnar)`` of a REST predict body, in either of TF
    Serving's formats: ``{"instances": [{name: value, ...}, ...]}`` (a row per example,
    answered with ``predictions``) or ``{"inputs": {name: [value, ...], ...}}`` (a column per
    input, answered with ``outputs``); ``{"b64": ...}`` values are bytes.

    Raises:
      ValueError, KeyError: a malformed body (the message says what is wrong).
    """
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object with 'instances' (a row per "
                         f"example) or 'inputs' (a column per input), got a "
                         f"{type(body).__name__}")
    if ("instances" in body) == ("inputs" in body):
        raise ValueError("give 'instances' (a row per example) or 'inputs' (a column per "
                         "input)" + (", not both" if "inputs" in body else ""))
    if "inputs" in body:
        columns = body["inputs"]
        if not (isinstance(columns, dict) and columns
                and all(isinstance(column, list) for column in columns.values())):
            raise ValueError("'inputs' must be an object of named inputs, each a list over "
                             "the batch")
        return {key: [_from_json(v, key) for v in column]
                for key, column in columns.items()}, True
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ValueError("'instances' must be a non-empty list")
    if not all(isinstance(instance, dict) for instance in instances):
        raise ValueError("each of 'instances' must be an object of named inputs")
    return {key: [_from_json(instance[key], key) for instance in instances]
            for key in instances[0]}, False


def _from_json(value, name):
    """A JSON value as a tensor element: ``{"b64": ...}`` -> bytes (strict base64)."""
    if isinstance(value, dict) and "b64" in value:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (TypeError, ValueError) as e:  # binascii.Error is a ValueError
            raise ValueError(f"input {name}: 'b64' is not base64 ({e})") from None
    return value


def serve(base_path, name, port, host="127.0.0.1", rest_port=0, max_concurrent=2,
          max_pixels=40_000_000, max_batch_size=64):
    """Starts the servers; returns ``(grpc_server, http_server_or_None, ModelServer)``."""
    for flag, value, least in (("port", port, 1), ("rest_port", rest_port, 0)):
        if int(value) != value or not least <= value <= 65535:
            raise ValueError(f"--{flag} must be a port number ({least}-65535), got {value!r}")
    model = ModelServer(base_path, name, max_concurrent, max_pixels, max_batch_size)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=max_concurrent + 4),
                         maximum_concurrent_rpcs=64,
                         options=[("grpc.max_send_message_length", 256 << 20),
                                  ("grpc.max_receive_message_length", MAX_REQUEST_BYTES)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(model),
                                                                        server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(model), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    rest = None
    if rest_port:
        rest = http.server.ThreadingHTTPServer((host, rest_port), _rest_handler(model))
        threading.Thread(target=rest.serve_forever, daemon=True).start()
    return server, rest, model


def main(argv):
    del argv
    try:
        server, rest, model = serve(FLAGS.model_base_path, FLAGS.model_name, FLAGS.port,
                                    FLAGS.host, FLAGS.rest_port, FLAGS.max_concurrent,
                                    FLAGS.max_pixels, FLAGS.max_batch_size)
    except (ValueError, OSError) as e:  # no export there, a port taken: one line, exit 1
        raise SystemExit(f"error: {_files.error_message(e)}")
    print(f"serving {model.name} version {model.version} from {model.path} on "
          f"{FLAGS.host}:{FLAGS.port} (gRPC)" + (f" and :{FLAGS.rest_port} (REST)" if rest else ""),
          flush=True)
    poll = FLAGS.file_system_poll_wait_seconds
    # wait_for_termination(timeout) is True when the timeout passed and the server still runs
    while server.wait_for_termination(timeout=poll if poll > 0 else None):
        try:
            change = model.reload_newest()
        except Exception as e:  # keep serving whatever a look at the directory meets
            change = f"warning: looking for a newer version failed: {type(e).__name__}: {e}"
        if change:
            print(change, flush=True)


if __name__ == "__main__":
    app.run(main)
