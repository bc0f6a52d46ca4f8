"""Label-only teachers over HTTP: `db3_timm.serve` (OIP v2 server) and `LabelOracle.from_url`, on a real uvicorn."""
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

import timm  # noqa: E402

import db3_timm  # noqa: E402,F401  (registers lenet5_fifth)
from db3_timm import LabelOracle, create_labeler  # noqa: E402
from db3_timm.transfer.label import label_dataset, read_manifest  # noqa: E402
from db3_timm.remote import RemoteAuthError, RemoteOracleError, RemotePredictor  # noqa: E402
from db3_timm.serve import create_app  # noqa: E402

TOKEN = "s3cret-token"
NAME = "lenet5_fifth"


def _model():
    torch.manual_seed(0)
    return timm.create_model(NAME).eval()


def _app(model, **kw):
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return create_app(model, model_name=NAME, mean=cfg["mean"], std=cfg["std"], input_size=cfg["input_size"], **kw)


class Server:
    """A uvicorn server in a background thread on a loopback port (restartable on the same port)."""

    def __init__(self, app, port=0):
        self.app = app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=1) as r:
                    assert json.loads(r.read())["ready"]
                    return
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def server(model):
    s = Server(_app(model, token=TOKEN, max_batch_size=64))
    yield s
    s.stop()


def _images(n, seed=1, size=28):
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish blobs + noise so a random-weight net answers several classes.
    return (torch.rand(n, 1, size, size, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 2).clamp(0, 1)


def _post(url, body, token=TOKEN, content_type="application/json"):
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def _payload(x, datatype="FP32", shape=None, **extra):
    return json.dumps({"inputs": [{"name": "input", "shape": list(shape or x.shape), "datatype": datatype,
                                   "data": x.flatten().tolist()}], **extra}).encode()


# ---------------------------------------------------------------------- equality with in-process
def test_metadata_and_labels_equal_in_process(server, model):
    with urllib.request.urlopen(urllib.request.Request(
            f"{server.url}/v2/models/{NAME}", headers={"Authorization": f"Bearer {TOKEN}"})) as r:
        meta = json.loads(r.read())
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]}]

    remote_log, local_log = [], []
    remote = LabelOracle.from_url(server.url, NAME, token=TOKEN, max_batch_size=16,
                                  query_log=lambda b, t: remote_log.append((b, t)))
    local = LabelOracle.from_timm_model(model, max_batch_size=16, query_log=lambda b, t: local_log.append((b, t)))
    assert remote.input_size == (1, 28, 28) and remote.num_classes == 10
    x = _images(50)
    labels = remote(x)
    assert labels.dtype == torch.int64 and labels.shape == (50,)
    assert torch.equal(labels, local(x)) and len(labels.unique()) > 1
    assert remote.queries == local.queries == 50 and remote_log == local_log
    # Other sizes are resized on the client exactly like the in-process oracle does; float64 too.
    y = _images(7, seed=2, size=32).double()
    assert torch.equal(remote(y), local(y)) and remote.queries == 57
    # The budget is refused before anything is sent.
    remote.budget = 60
    with pytest.raises(db3_timm.QueryBudgetExceeded):
        remote(x[:4])
    assert remote.queries == 57
    assert TOKEN not in repr(remote._predict) and TOKEN not in repr(remote)


def test_bd_labelling_equals_in_process(server, model):
    x = _images(3, seed=3)
    refs = _images(40, seed=4)
    soft = []
    for oracle in (LabelOracle.from_url(server.url, NAME, token=TOKEN, max_batch_size=64),
                   LabelOracle.from_timm_model(model, max_batch_size=64)):
        labeler = create_labeler("bd", oracle, queries_per_target=30, seed=0)
        soft.append((labeler.label(x, refs, generator=torch.Generator().manual_seed(7)), oracle.queries))
    (a, qa), (b, qb) = soft
    assert torch.equal(a.labels, b.labels) and torch.equal(a.distances, b.distances)
    assert torch.equal(a.queries, b.queries) and qa == qb > 0


# ---------------------------------------------------------------------- auth, quota, bad input
def test_auth_errors_are_not_retried(server):
    for token, status in ((None, 401), ("wrong", 403)):
        code, body, _ = _post(f"{server.url}/v2/models/{NAME}/infer", _payload(_images(1)), token=token)
        assert code == status and "error" in body
        sleeps = []
        pred = RemotePredictor(server.url, NAME, token=token, retries=5, sleep=sleeps.append)
        with pytest.raises(RemoteAuthError) as info:
            pred(_images(2))
        assert isinstance(info.value, PermissionError) and info.value.status == status and sleeps == []
        with pytest.raises(PermissionError):
            LabelOracle.from_url(server.url, NAME, token=token)
    # Health stays open; the token also comes from DB3_TOKEN.
    with urllib.request.urlopen(server.url + "/v2/health/live") as r:
        assert r.status == 200


def test_token_from_env(server, monkeypatch):
    monkeypatch.setenv("DB3_TOKEN", TOKEN)
    oracle = LabelOracle.from_url(f"{server.url}/v2/models/{NAME}")
    assert oracle(_images(3)).shape == (3,)


def test_bad_payloads_are_400_and_server_keeps_serving(server):
    url = f"{server.url}/v2/models/{NAME}/infer"
    x = _images(2)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    cases = {
        "wrong shape": _payload(x, shape=[2, 1, 27, 28]),
        "size mismatch": _payload(x[:1], shape=[2, 1, 28, 28]),
        "NaN": _payload(nan),
        "datatype": _payload(x, datatype="FP64"),
        "not json": b"{not json",
        "no inputs": b"{}",
        "strings": json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 1, 1], "datatype": "FP32",
                                           "data": ["a"]}]}).encode(),
        "logits asked": _payload(x, outputs=[{"name": "logits"}]),
        "probabilities asked": _payload(x, outputs=[{"name": "probabilities"}]),
        "batch too large": _payload(_images(65)),
    }
    for what, body in cases.items():
        code, answer, _ = _post(url, body)
        assert code == 400, what
        assert answer["error"], what
    code, answer, _ = _post(f"{server.url}/v2/models/other/infer", _payload(x))
    assert code == 404
    # A body over the limit is refused from its Content-Length.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", f"/v2/models/{NAME}/infer")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(24 * 64 * 784 + 65537))
    conn.endheaders()  # the body is never sent: the declared length alone is refused
    resp = conn.getresponse()
    assert resp.status == 413 and "exceeds" in json.loads(resp.read())["error"]
    conn.close()
    # Still serving, and the label output ignores any request for scores.
    code, answer, _ = _post(url, _payload(x, outputs=[{"name": "label", "parameters": {"classification": 3}}]))
    assert code == 200 and answer["outputs"][0]["datatype"] == "INT64" and len(answer["outputs"]) == 1
    assert answer["outputs"][0]["shape"] == [2] and all(isinstance(v, int) for v in answer["outputs"][0]["data"])
    # Client-side 400s are not retried either.
    sleeps = []
    with pytest.raises(RemoteOracleError) as info:
        RemotePredictor(server.url, NAME, token=TOKEN, retries=5, sleep=sleeps.append)(_images(2, size=28)[:, :, :27])
    assert info.value.status == 400 and sleeps == []


def test_quota_429_then_retry_after_window(model, caplog):
    s = Server(_app(model, quota=20, quota_window=1.0))
    try:
        local = LabelOracle.from_timm_model(model)
        x = _images(30)
        strict = LabelOracle.from_url(s.url, NAME, max_batch_size=16, retries=0)
        with pytest.raises(RemoteOracleError) as info:
            strict(x)
        assert info.value.status == 429 and info.value.queries_spent == 16 and strict.queries == 16
        assert "16 queries spent so far" in str(info.value)
        code, _, headers = _post(f"{s.url}/v2/models/{NAME}/infer", _payload(x[:16]), token=None)
        assert code == 429 and int(headers["Retry-After"]) >= 1

        oracle = LabelOracle.from_url(s.url, NAME, max_batch_size=16, retries=3)
        t0 = time.monotonic()
        labels = oracle(x)  # 16 answered, 14 refused (429, Retry-After), then answered in the next window
        assert time.monotonic() - t0 >= 0.9
        assert torch.equal(labels, local(x)) and oracle.queries == 30
        # The wait is logged, so a long job that slows down says why.
        waits = [r.getMessage() for r in caplog.records if r.name == "db3_timm.remote"]
        assert any("HTTP 429" in m and "retry 1 of 3" in m for m in waits), waits
        code, answer, _ = _post(f"{s.url}/v2/models/{NAME}/infer", _payload(_images(21)), token=None)
        assert code == 400 and "quota" in answer["error"]
    finally:
        s.stop()


def test_a_served_teacher_names_its_classes_to_the_client(model, server):
    names = [f"kind {c}" for c in range(10)]
    s = Server(_app(model, class_names=names))
    try:
        assert LabelOracle.from_url(s.url, NAME).class_names == names
    finally:
        s.stop()
    assert LabelOracle.from_url(server.url, NAME, token=TOKEN).class_names is None  # a model without names
    with pytest.raises(ValueError, match="10 names"):
        _app(model, class_names=names[:9])


@pytest.mark.parametrize("window", [float("nan"), float("inf"), float("-inf"), 0, -1.0, "soon"])
def test_quota_window_must_be_finite_and_positive(model, window):
    # A NaN window never ended and an infinite one has no Retry-After: both used to be accepted and turn
    # every request past the quota into a permanent 500. They are refused when the app is built.
    with pytest.raises(ValueError) as info:
        _app(model, quota=5, quota_window=window)
    msg = str(info.value)
    assert "quota_window" in msg and repr(window) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="quota_window"):  # also when no quota is set
        _app(model, quota_window=window)


@pytest.mark.parametrize("quota", [0, -3, 2.5, float("nan"), float("inf")])
def test_quota_must_be_a_positive_integer(model, quota):
    with pytest.raises(ValueError) as info:
        _app(model, quota=quota)
    assert "quota must be" in str(info.value) and repr(quota) in str(info.value)


def _infer_json(shape=(1, 1, 28, 28), data=None, **extra):
    """An infer body as text, so tests can splice in what `json.dumps` would not write."""
    data = json.dumps([0.5] * 784) if data is None else data
    rest = "".join(f", {json.dumps(k)}: {v}" for k, v in extra.items())
    return (f'{{"inputs": [{{"name": "input", "shape": {json.dumps(list(shape))}, "datatype": "FP32", '
            f'"data": {data}}}]{rest}}}').encode()


def _assert_all_400_and_no_quota_spent(model, cases):
    """Posts each malformed body to a server with a quota of 2: each must be a 400 (never a 5xx, which
    clients retry) with a short message, and none may spend quota: 2 images still pass, a third is 429."""
    s = Server(_app(model, quota=2, quota_window=3600, max_batch_size=4, max_request_bytes=1 << 20))
    try:
        url = f"{s.url}/v2/models/{NAME}/infer"
        for what, (body, needle) in cases.items():
            code, answer, _ = _post(url, body, token=None)
            assert code == 400, (what, answer)
            assert needle in answer["error"] and len(answer["error"]) < 300, (what, answer)
        code, answer, _ = _post(url, _payload(_images(2)), token=None)
        assert code == 200 and len(answer["outputs"][0]["data"]) == 2
        assert _post(url, _payload(_images(1)), token=None)[0] == 429
    finally:
        s.stop()


def test_malformed_json_is_400_not_500(model):
    big = "9" * 400  # parses to an int, but overflows float32 / float64
    cases = {
        # json.loads raises RecursionError (not ValueError) on deep nesting: it used to be a 500.
        "nested array": (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        "nested in inputs": (b'{"inputs": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply"),
        # json.loads raises ValueError for ints past sys.get_int_max_str_digits() (4300).
        "5000-digit int": (_infer_json(data="[" + "1" * 5000 + "]"), "4300 digits"),
        "5000-digit shape": (_infer_json(shape=[1], data="[]").replace(b"[1]", b"[" + b"7" * 5000 + b"]"),
                             "4300 digits"),
        # A 400-digit int parses, then np.asarray(..., float32) raises OverflowError: it used to be a 500.
        "400-digit int in data": (_infer_json(data="[" + ", ".join([big] + ["0.5"] * 783) + "]"), "too large"),
        "400-digit negative int": (_infer_json(data="[-" + big + ", " + ", ".join(["0.5"] * 783) + "]"),
                                   "too large"),
        "400-digit batch size": (_infer_json(shape=[int(big), 1, 28, 28]), "max_batch_size"),
        "400-digit negative batch": (_infer_json(shape=[-int(big), 1, 28, 28]), "at least 1"),
        "400-digit height": (_infer_json(shape=[1, 1, int(big), 28]), "does not match"),
        "1e999 (inf)": (_infer_json(data="[1e999, " + ", ".join(["0.5"] * 783) + "]"), "infinity"),
    }
    _assert_all_400_and_no_quota_spent(model, cases)


def test_malformed_tensor_is_400_not_500(model):
    cases = {
        # Iterating a non-list 'outputs' raised TypeError: it used to be a 500.
        "outputs 5": (_infer_json(outputs="5"), "'outputs' must be a list"),
        "outputs object": (_infer_json(outputs='{"label": 1}'), "'outputs' must be a list"),
        "outputs string": (_infer_json(outputs='"label"'), "'outputs' must be a list"),
        "outputs [5]": (_infer_json(outputs="[5]"), "unknown output 5"),
        "outputs [null]": (_infer_json(outputs="[null]"), "unknown output None"),
        "outputs name list": (_infer_json(outputs='[{"name": ["label"]}]'), "unknown output"),
        "data string": (json.dumps({"inputs": [{"shape": [1, 1, 28, 28], "datatype": "FP32",
                                                "data": "abc"}]}).encode(), "JSON array"),
        "data objects": (_infer_json(data="[{}]"), "only numbers"),
        "data ragged": (_infer_json(data="[[1, 2], [3]]"), "only numbers"),
        "data too deep": (_infer_json(data="[" * 200 + "1" + "]" * 200), "only numbers"),
        "huge shape list": (_infer_json(shape=[10 ** 300] * 2000), "[N, C, H, W]"),
        "inputs not a list": (b'{"inputs": 5}', "'inputs'"),
        "input not an object": (b'{"inputs": [5]}', "each input"),
        "shape floats": (_infer_json(shape=[1.0, 1, 28, 28]), "[N, C, H, W]"),
        "shape bools": (_infer_json(shape=[True, 1, 28, 28]), "[N, C, H, W]"),
    }
    _assert_all_400_and_no_quota_spent(model, cases)


def test_parallel_clients(server, model):
    local = LabelOracle.from_timm_model(model)
    xs = [_images(20 + i, seed=10 + i) for i in range(8)]
    expected = [local(x) for x in xs]

    def ask(x):
        oracle = LabelOracle.from_url(server.url, NAME, token=TOKEN, max_batch_size=8)
        return oracle(x), oracle.queries

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, xs))
    for (labels, queries), want, x in zip(got, expected, xs):
        assert torch.equal(labels, want) and queries == x.shape[0]


# ---------------------------------------------------------------------- fault: server down mid-labelling
def test_server_down_mid_labelling_resumes(tmp_path, model):
    x = _images(24, seed=20)
    refs = _images(30, seed=21)
    cfg = {"queries_per_target": 12, "seed": 0}
    whole = label_dataset(create_labeler("bd", LabelOracle.from_timm_model(model), **cfg), x, tmp_path / "whole",
                          references=refs, shard_size=8, seed=3, progress=False)

    s = Server(_app(model, token=TOKEN))
    port = s.port
    oracle = LabelOracle.from_url(s.url, NAME, token=TOKEN, retries=1, backoff=0.01)
    stop_at = read_manifest(tmp_path / "whole")["queries"]["reference_check"] + 1

    def kill_after(batch, total):
        if total >= stop_at and s.thread.is_alive():
            s.stop()  # the server goes away between two requests of shard 0

    oracle.query_log = kill_after
    out = tmp_path / "remote"
    with pytest.raises(RemoteOracleError) as info:
        label_dataset(create_labeler("bd", oracle, **cfg), x, out, references=refs, shard_size=8, seed=3,
                      progress=False)
    assert info.value.status is None and info.value.queries_spent == oracle.queries
    assert read_manifest(out)["queries"]["total"] == oracle.queries

    s2 = Server(_app(model, token=TOKEN), port=port)
    try:
        oracle2 = LabelOracle.from_url(s2.url, NAME, token=TOKEN)
        resumed = label_dataset(create_labeler("bd", oracle2, **cfg), x, out, references=refs, shard_size=8, seed=3,
                                progress=False)
    finally:
        s2.stop()
    a, b = whole.with_format("torch")[:], resumed.with_format("torch")[:]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- hostile servers and URLs
class _Redirector:
    """A plain HTTP server answering every request with a redirect to ``target`` and remembering the headers it saw."""

    def __init__(self, status, target):
        import http.server

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                seen.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def test_the_token_never_follows_a_redirect_to_another_origin():
    thief = _Redirector(200, "/")  # the other origin: it must never see the token
    redirect = _Redirector(302, f"{thief.url}/v2/models/{NAME}")
    try:
        with pytest.raises(RemoteOracleError, match="refused to follow a 302 redirect of a GET request"):
            LabelOracle.from_url(redirect.url, NAME, token=TOKEN, retries=0)
        assert thief.seen == [] and redirect.seen[0]["Authorization"] == f"Bearer {TOKEN}"
    finally:
        thief.stop()
        redirect.stop()


def test_a_post_is_never_redirected_into_a_get(model):
    s = Server(_app(model))
    redirect = _Redirector(307, f"{s.url}/v2/models/{NAME}/infer")
    try:
        predictor = RemotePredictor(redirect.url, NAME, retries=0, input_size=(1, 28, 28))
        with pytest.raises(RemoteOracleError, match="refused to follow a 307 redirect of a POST request"):
            predictor(_images(2))
    finally:
        redirect.stop()
        s.stop()


def test_credentials_never_appear_in_names_or_errors():
    with pytest.raises(ValueError, match="credentials in the URL") as info:
        LabelOracle.from_url("http://user:hunter2@127.0.0.1:9/v2/models/m")
    assert "hunter2" not in str(info.value)
    predictor = RemotePredictor("http://127.0.0.1:9/?api_key=hunter2", "m", retries=0)
    assert "hunter2" not in repr(predictor) and predictor.public_url == "http://127.0.0.1:9/?api_key=***"
    with pytest.raises(RemoteOracleError) as info:
        predictor.metadata()
    assert "hunter2" not in str(info.value)


def test_a_retried_request_is_answered_from_memory_and_charged_once(model):
    s = Server(_app(model, quota=4, quota_window=3600))
    try:
        x = _images(4)
        body = json.loads(_payload(x))
        body["id"] = "request-1"
        first = _post(f"{s.url}/v2/models/{NAME}/infer", json.dumps(body).encode(), token=None)
        again = _post(f"{s.url}/v2/models/{NAME}/infer", json.dumps(body).encode(), token=None)
        assert first[0] == again[0] == 200 and first[1] == again[1] and first[1]["id"] == "request-1"
        body["id"] = "request-2"  # a new request: the quota was spent once, by the first
        assert _post(f"{s.url}/v2/models/{NAME}/infer", json.dumps(body).encode(), token=None)[0] == 429
    finally:
        s.stop()


def test_retry_after_that_is_not_a_time_is_ignored():
    from db3_timm.remote import _retry_after

    assert _retry_after("nan") is None and _retry_after("inf") is None and _retry_after("2") == 2.0


def test_a_lost_answer_is_retried_without_running_the_batch_twice(model):
    import http.server
    import socket as socket_module

    s = Server(_app(model, quota=12, quota_window=3600))
    forwarded = []

    class DropFirstAnswer(http.server.BaseHTTPRequestHandler):
        """A proxy that forwards every request but loses the first answer (the connection just closes)."""

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            req = urllib.request.Request(s.url + self.path, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                answer = r.read()
            forwarded.append(json.loads(body)["id"])
            if len(forwarded) == 1:
                self.connection.shutdown(socket_module.SHUT_RDWR)  # the server ran it; the client never hears
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DropFirstAnswer)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        x = _images(12)
        oracle = LabelOracle.from_url(f"http://127.0.0.1:{proxy.server_port}", NAME, retries=2, backoff=0.01,
                                      input_size=(1, 28, 28), num_classes=10)
        assert torch.equal(oracle(x), LabelOracle.from_timm_model(model)(x))
        assert len(forwarded) == 2 and forwarded[0] == forwarded[1]  # the retry carried the same request id
        assert oracle.queries == 12  # counted once
        # The server answered the retry from memory: the 12-image quota was charged once, so 12 more are refused.
        assert _post(f"{s.url}/v2/models/{NAME}/infer", _payload(x), token=None)[0] == 429
        assert _post(f"{s.url}/v2/models/{NAME}/infer", _payload(x[:1]), token=None)[0] == 429
    finally:
        proxy.shutdown()
        s.stop()


# ---------------------------------------------------------------------- the binary tensor extension
def test_binary_and_json_wires_answer_the_same_labels(server, model):
    x = _images(37)
    local = LabelOracle.from_timm_model(model)(x)
    for wire in ("binary", "json", "auto"):
        oracle = LabelOracle.from_url(server.url, NAME, token=TOKEN, wire=wire, max_batch_size=16)
        assert torch.equal(oracle(x), local) and oracle.queries == 37
    auto = LabelOracle.from_url(server.url, NAME, token=TOKEN)
    auto(x[:1])
    assert auto._predict.wire == "binary"  # the server lists the extension


def _binary_post(url, header, blob, header_length=None, token=None):
    head = json.dumps(header).encode()
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(head) if header_length is None else header_length)}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=head + blob, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers


def test_a_malformed_binary_request_is_400_and_spends_nothing(model):
    s = Server(_app(model, quota=3, quota_window=3600))
    try:
        x = _images(3)
        blob = x.numpy().astype("<f4").tobytes()
        header = {"inputs": [{"name": "input", "shape": [3, 1, 28, 28], "datatype": "FP32",
                              "parameters": {"binary_data_size": len(blob)}}],
                  "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}
        url = f"{s.url}/v2/models/{NAME}/infer"
        for header_length, words in ((10**6, b"does not fit a body"), ("ten", b"must be an integer"), (5, b"not valid JSON")):
            code, body, _ = _binary_post(url, header, blob, header_length)
            assert code == 400 and words in body
        short = {**header, "inputs": [{**header["inputs"][0], "parameters": {"binary_data_size": len(blob) - 4}}]}
        code, body, _ = _binary_post(url, short, blob[:-4])
        assert code == 400 and b"needs 9408" in body
        code, body, headers = _binary_post(url, header, blob)  # the quota is untouched by the refusals
        k = int(headers["Inference-Header-Content-Length"])
        answer = json.loads(body[:k])
        assert code == 200 and answer["outputs"][0]["parameters"]["binary_data_size"] == 24
        labels = torch.from_numpy(__import__("numpy").frombuffer(body[k:], dtype="<i8").copy())
        assert torch.equal(labels, LabelOracle.from_timm_model(model)(x))
    finally:
        s.stop()
