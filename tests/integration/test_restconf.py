"""RESTCONF (RFC 8040) on a real controller process, with httpx and curl over TLS (the
generated certificate, verified), next to ncclient on the same controller: every method,
both encodings, operations, the SSE event stream, discovery, and RFC 8040 section 7 errors
after which nothing has changed (checked over NETCONF)."""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ncclient.transport.session as nc_session
import pytest
from ctlproc import ADMIN_PW, OPER_PW, ControllerProcess, free_port
from lxml import etree

from netconf_core.polling import wait_until

nc_session.TICK = 0.001
FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
M = "i2nsf-flow-policy"
NSFS = f"/data/{M}:flow-protection/nsfs"
JSON_T = "application/yang-data+json"
XML_T = "application/yang-data+xml"
HOST_KEY = "SHA256:" + "Q" * 43
CLOSED_PORT = free_port()  # management of test NSFs: loopback, nothing listens


def nsf(name: str, dp: str = "198.51.100.1", password: str | None = None,
        prefix: str = "192.0.2.0/24") -> dict[str, Any]:
    mgmt: dict[str, Any] = {"address": "127.0.0.1", "port": CLOSED_PORT, "username": "u",
                            "host-key": HOST_KEY}
    if password is None:
        mgmt["password-file"] = "/nonexistent/pw"
    else:
        mgmt["password"] = password
    return {"name": name, "management": mgmt, "data-plane-address": dp,
            "protected-prefix": [prefix]}


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    c = ControllerProcess(tmp_path_factory.mktemp("restconf")).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def http(ctl: ControllerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ctl.base, verify=_tls(ctl), auth=("admin", ADMIN_PW),
                      timeout=30) as c:
        yield c


@pytest.fixture(autouse=True)
def clean(ctl: ControllerProcess) -> Iterator[None]:
    yield
    with httpx.Client(base_url=ctl.base, verify=_tls(ctl), auth=("admin", ADMIN_PW),
                      timeout=30) as c:
        c.request("DELETE", f"/data/{M}:flow-protection")


def _tls(ctl: ControllerProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ctl.cert))


def running(ctl: ControllerProcess) -> bytes:
    """running over NETCONF, canonical bytes."""
    with ctl.netconf() as m:
        reply = m.get_config("running")
    data = etree.fromstring(reply.xml.encode()).find(
        "{urn:ietf:params:xml:ns:netconf:base:1.0}data")
    return etree.tostring(data, method="c14n")


def errors(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.headers["content-type"].startswith(JSON_T), r.headers
    return r.json()["ietf-restconf:errors"]["error"]


def post_nsf(http: httpx.Client, name: str, **kw: Any) -> httpx.Response:
    return http.post(NSFS, content=json.dumps({f"{M}:nsf": [nsf(name, **kw)]}),
                     headers={"Content-Type": JSON_T})


# ---- discovery ----------------------------------------------------------------------------


def test_discovery(ctl: ControllerProcess, http: httpx.Client) -> None:
    r = httpx.get(f"https://127.0.0.1:{ctl.rc_port}/.well-known/host-meta",
                  verify=_tls(ctl))
    assert r.status_code == 200
    link = etree.fromstring(r.content).find("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")
    assert link.get("rel") == "restconf" and link.get("href") == "/restconf"
    root = http.get("").json()["ietf-restconf:restconf"]
    assert root["yang-library-version"] == "2019-01-04"
    assert http.get("/yang-library-version").json() == {
        "ietf-restconf:yang-library-version": "2019-01-04"}
    ops = http.get("/operations").json()["ietf-restconf:operations"]
    assert f"{M}:rekey-policy" in ops and "ietf-netconf:edit-config" not in ops
    lib = http.get("/data/ietf-yang-library:yang-library").json()
    mods = {m["name"] for ms in lib["ietf-yang-library:yang-library"]["module-set"]
            for m in ms["module"]}
    assert {M, "ietf-restconf-monitoring"} <= mods
    st = http.get("/data/ietf-restconf-monitoring:restconf-state").json()
    stream = st["ietf-restconf-monitoring:restconf-state"]["streams"]["stream"][0]
    assert stream["name"] == "NETCONF"
    assert {a["location"] for a in stream["access"]} == {
        f"{ctl.base}/streams/NETCONF/xml", f"{ctl.base}/streams/NETCONF/json"}
    # the same monitoring state over NETCONF (one server, two protocols)
    with ctl.netconf() as m:
        xml = m.get(filter=("subtree", '<restconf-state xmlns="urn:ietf:params:xml:ns:yang:'
                            'ietf-restconf-monitoring"/>')).xml
    assert "streams/NETCONF/json" in xml
    r = http.request("OPTIONS", NSFS)
    assert "PATCH" in r.headers["allow"] and "DELETE" in r.headers["allow"]


# ---- every method, JSON --------------------------------------------------------------------


def test_methods_json_shared_with_netconf(ctl: ControllerProcess, http: httpx.Client) -> None:
    r = post_nsf(http, "gw1")
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{ctl.base}{NSFS}/nsf=gw1"
    etag = r.headers["etag"]
    # NETCONF sees what RESTCONF wrote: the same running datastore
    assert b"<name>gw1</name>" in running(ctl)

    got = http.get(f"{NSFS}/nsf=gw1").json()[f"{M}:nsf"][0]
    assert got["data-plane-address"] == "198.51.100.1"
    assert got["management"]["port"] == CLOSED_PORT  # uint16: a JSON number (RFC 7951)
    assert "session" in got  # state merged, as NETCONF <get>
    cfg = http.get(f"{NSFS}/nsf=gw1", params={"content": "config"}).json()[f"{M}:nsf"][0]
    assert "session" not in cfg
    state = http.get(f"{NSFS}/nsf=gw1", params={"content": "nonconfig"}).json()
    assert "management" not in state[f"{M}:nsf"][0] and "session" in state[f"{M}:nsf"][0]
    shallow = http.get(f"{NSFS}/nsf=gw1", params={"depth": "1"}).json()[f"{M}:nsf"][0]
    assert shallow == {"name": "gw1"} or set(shallow) <= {"name", "data-plane-address",
                                                          "protected-prefix", "dataplane"}

    sel = http.get(f"{NSFS}/nsf=gw1", params={"fields": "management(address;port);"
                                                       "data-plane-address"}).json()
    assert sel == {f"{M}:nsf": [{"name": "gw1", "data-plane-address": "198.51.100.1",
                                 "management": {"address": "127.0.0.1",
                                                "port": CLOSED_PORT}}]}
    sel = http.get(NSFS, params={"fields": "nsf/session/state"}).json()
    entry = sel[f"{M}:nsfs"]["nsf"][0]
    assert set(entry) == {"name", "session"} and set(entry["session"]) == {"state"}
    r = http.get(NSFS, params={"fields": "nsf("})
    assert r.status_code == 400 and errors(r)[0]["error-tag"] == "invalid-value"
    # PUT a leaf (replace, existing: 204)
    r = http.put(f"{NSFS}/nsf=gw1/data-plane-address",
                 content=json.dumps({f"{M}:data-plane-address": "198.51.100.7"}),
                 headers={"Content-Type": JSON_T})
    assert r.status_code == 204, r.text
    assert r.headers["etag"] != etag
    assert http.get(f"{NSFS}/nsf=gw1/data-plane-address").json() == {
        f"{M}:data-plane-address": "198.51.100.7"}
    # PUT a new list entry (201)
    r = http.put(f"{NSFS}/nsf=gw2", content=json.dumps({f"{M}:nsf": [nsf("gw2",
                                                                          "198.51.100.2")]}),
                 headers={"Content-Type": JSON_T})
    assert r.status_code == 201, r.text
    # PATCH (merge) adds a prefix and keeps the rest
    r = http.patch(f"{NSFS}/nsf=gw2", content=json.dumps(
        {f"{M}:nsf": [{"name": "gw2", "protected-prefix": ["203.0.113.0/24"]}]}),
        headers={"Content-Type": JSON_T})
    assert r.status_code == 204, r.text
    got = http.get(f"{NSFS}/nsf=gw2").json()[f"{M}:nsf"][0]
    assert sorted(got["protected-prefix"]) == ["192.0.2.0/24", "203.0.113.0/24"]
    assert got["data-plane-address"] == "198.51.100.2"
    # a leaf-list instance by value
    r = http.delete(f"{NSFS}/nsf=gw2/protected-prefix=203.0.113.0%2F24")
    assert r.status_code == 204, r.text
    assert http.get(f"{NSFS}/nsf=gw2").json()[f"{M}:nsf"][0]["protected-prefix"] == [
        "192.0.2.0/24"]
    # DELETE, then the resource is gone (404) — over NETCONF too
    assert http.delete(f"{NSFS}/nsf=gw2").status_code == 204
    r = http.get(f"{NSFS}/nsf=gw2")
    assert r.status_code == 404 and errors(r)[0]["error-tag"] == "invalid-value"
    assert b"gw2" not in running(ctl)
    # HEAD: headers, no body
    r = http.head(f"{NSFS}/nsf=gw1")
    assert r.status_code == 200 and r.content == b"" and "etag" in r.headers


def test_methods_xml(ctl: ControllerProcess, http: httpx.Client) -> None:
    body = (f'<nsf xmlns="{FP}"><name>gx</name><management><address>127.0.0.1</address>'
            f"<port>{CLOSED_PORT}</port><username>u</username><password-file>/x</password-file>"
            f"<host-key>{HOST_KEY}</host-key></management>"
            "<data-plane-address>198.51.100.9</data-plane-address></nsf>")
    r = http.post(NSFS, content=body, headers={"Content-Type": XML_T, "Accept": XML_T})
    assert r.status_code == 201, r.text
    r = http.get(f"{NSFS}/nsf=gx/management", headers={"Accept": XML_T})
    assert r.headers["content-type"].startswith(XML_T)
    el = etree.fromstring(r.content)
    assert el.tag == f"{{{FP}}}management" and el.findtext(f"{{{FP}}}username") == "u"
    r = http.patch(f"{NSFS}/nsf=gx", content=f'<nsf xmlns="{FP}"><name>gx</name>'
                   "<dataplane>userspace</dataplane></nsf>", headers={"Content-Type": XML_T})
    assert r.status_code == 204, r.text
    r = http.get(f"{NSFS}/nsf=gx/dataplane", headers={"Accept": XML_T})
    assert etree.fromstring(r.content).text == "userspace"
    post_nsf(http, "gy")
    r = http.get(f"{NSFS}/nsf", headers={"Accept": XML_T})  # two entries: no single root
    assert r.status_code == 400 and b"key values" in r.content
    assert len(http.get(f"{NSFS}/nsf").json()[f"{M}:nsf"]) == 2  # JSON has arrays
    r = http.get(f"{NSFS}/nsf=nope", headers={"Accept": XML_T})
    assert r.status_code == 404
    err = etree.fromstring(r.content)
    rc = "{urn:ietf:params:xml:ns:yang:ietf-restconf}"
    assert err.tag == rc + "errors"
    assert err.findtext(f"{rc}error/{rc}error-tag") == "invalid-value"


def test_put_datastore_and_post_container(ctl: ControllerProcess, http: httpx.Client) -> None:
    post_nsf(http, "old")
    doc = {f"{M}:flow-protection": {"nsfs": {"nsf": [nsf("new1")]}}}
    r = http.put("/data", content=json.dumps(doc), headers={"Content-Type": JSON_T})
    assert r.status_code == 204, r.text
    names = [n["name"] for n in http.get(NSFS).json()[f"{M}:nsfs"]["nsf"]]
    assert names == ["new1"]  # replaced, not merged
    r = http.post(f"/data/{M}:flow-protection", content=json.dumps(
        {f"{M}:crypto-profiles": {"crypto-profile": [{"name": "p1"}]}}),
        headers={"Content-Type": JSON_T})
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"/data/{M}:flow-protection/crypto-profiles")


# ---- errors: RFC 8040 section 7, and nothing changes ---------------------------------------


def test_errors_change_nothing(ctl: ControllerProcess, http: httpx.Client) -> None:
    assert post_nsf(http, "gw1").status_code == 201
    assert post_nsf(http, "gw2", dp="198.51.100.2").status_code == 201
    before = running(ctl)
    j = {"Content-Type": JSON_T}

    def check(r: httpx.Response, status: int, tag: str) -> dict[str, Any]:
        assert r.status_code == status, r.text
        e = errors(r)[0]
        assert e["error-tag"] == tag, e
        assert e["error-type"] in ("transport", "rpc", "protocol", "application")
        assert e["error-message"]
        assert running(ctl) == before, "a refused request changed the datastore"
        return e

    # a value the type refuses: 400 invalid-value with the path of the leaf
    e = check(http.put(f"{NSFS}/nsf=gw1/data-plane-address", headers=j,
                       content=json.dumps({f"{M}:data-plane-address": "not-an-ip"})),
              400, "invalid-value")
    assert "data-plane-address" in e.get("error-path", "")
    # a node the schema does not have
    check(http.patch(f"{NSFS}/nsf=gw1", headers=j,
                     content=json.dumps({f"{M}:nsf": [{"name": "gw1", "colour": "red"}]})),
          400, "unknown-element")
    # create what exists / delete what does not
    check(post_nsf(http, "gw1"), 409, "data-exists")
    check(http.delete(f"{NSFS}/nsf=gw9"), 409, "data-missing")
    check(http.patch(f"{NSFS}/nsf=gw9", headers=j,
                     content=json.dumps({f"{M}:nsf": [{"name": "gw9"}]})), 404, "invalid-value")
    # a key in the body other than the one in the URI
    check(http.put(f"{NSFS}/nsf=gw1", headers=j, content=json.dumps({f"{M}:nsf": [nsf("gwX")]})),
          400, "invalid-value")
    # the whole edit is refused when libyang's validation fails (mandatory leaf removed)
    r = http.delete(f"{NSFS}/nsf=gw1/management/username")
    assert r.status_code in (400, 409), r.text
    assert running(ctl) == before
    # a check only the controller makes (its applier): two policies with the same selectors
    pol = {"name": "p1", "endpoint-a": {"nsf": "gw1"}, "endpoint-b": {"nsf": "gw2"}}
    prof = {f"{M}:flow-protection": {"crypto-profiles": {"crypto-profile": [{"name": "default"}]},
                                     "policies": {"policy": [pol, {**pol, "name": "p2"}]}}}
    r = http.patch("/data", headers=j, content=json.dumps(prof))
    assert r.status_code in (400, 409, 500), r.text
    assert running(ctl) == before
    # replacing the whole datastore with something invalid: refused, all of it kept
    bad_ds = {f"{M}:flow-protection": {"nsfs": {"nsf": [{**nsf("gw1"),
                                                          "data-plane-address": "x"}]}}}
    check(http.put("/data", headers=j, content=json.dumps(bad_ds)), 400, "invalid-value")
    dangling = {f"{M}:flow-protection": {"policies": {"policy": [
        {"name": "p9", "endpoint-a": {"nsf": "gw1"}, "endpoint-b": {"nsf": "nowhere"},
         "crypto-profile": "nope"}]}}}
    r = http.put("/data", headers=j, content=json.dumps(dangling))
    assert r.status_code in (400, 409) and running(ctl) == before, r.text
    # malformed requests
    check(http.post(NSFS, headers=j, content=b"{not json"), 400, "malformed-message")
    check(http.get(f"/data/{M}:flow-protection/nsfs/nsf=a,b"), 400, "malformed-message")
    check(http.get("/data/no-such-module:x"), 400, "invalid-value")
    check(http.get(f"/data/{M}:flow-protection/nothing-here"), 400, "invalid-value")
    check(http.get(NSFS, params={"depth": "0"}), 400, "invalid-value")
    check(http.post(NSFS, params={"insert": "first"}, headers=j,
                    content=json.dumps({f"{M}:nsf": [nsf("gw7")]})), 400, "invalid-value")
    check(http.post(NSFS, headers={"Content-Type": "text/plain"}, content=b"x"), 415,
          "malformed-message")
    check(http.get(NSFS, headers={"Accept": "image/png"}), 406, "invalid-value")
    check(http.post("/operations/ietf-netconf:edit-config", headers=j, content=b"{}"), 404,
          "invalid-value")
    check(http.get(f"/operations/{M}:rekey-policy"), 405, "operation-not-supported")
    # state data is read-only
    check(http.put(f"{NSFS}/nsf=gw1/session", headers=j,
                   content=json.dumps({f"{M}:session": {}})), 405, "operation-not-supported")
    # If-Match with a stale entity tag: 412, nothing changes
    r = http.patch(f"{NSFS}/nsf=gw1", headers={**j, "If-Match": '"stale"'},
                   content=json.dumps({f"{M}:nsf": [{"name": "gw1", "dataplane": "userspace"}]}))
    assert r.status_code == 412 and running(ctl) == before
    # no or wrong credentials: 401 with a challenge
    for auth in (None, ("admin", "wrong")):
        r = httpx.get(f"{ctl.base}{NSFS}", verify=_tls(ctl), auth=auth)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert errors(r)[0]["error-tag"] == "access-denied"


def test_xml_error_path_declares_prefixes(ctl: ControllerProcess, http: httpx.Client) -> None:
    post_nsf(http, "gw1")
    r = http.post(NSFS, content=json.dumps({f"{M}:nsf": [nsf("gw1")]}),
                  headers={"Content-Type": JSON_T, "Accept": XML_T})
    assert r.status_code == 409
    rc = "{urn:ietf:params:xml:ns:yang:ietf-restconf}"
    path = etree.fromstring(r.content).find(f"{rc}error/{rc}error-path")
    assert path is not None and path.nsmap.get(M) == FP  # instance-identifier prefixes bound


# ---- access rules shared with NETCONF, locks ----------------------------------------------


def test_secrets_hidden_and_refused_for_oper(ctl: ControllerProcess, http: httpx.Client) -> None:
    assert post_nsf(http, "gw1", password="hunter2-secret").status_code == 201
    assert http.get(f"{NSFS}/nsf=gw1").json()[f"{M}:nsf"][0]["management"]["password"] == \
        "hunter2-secret"
    with httpx.Client(base_url=ctl.base, verify=_tls(ctl), auth=("oper", OPER_PW)) as op:
        r = op.get(f"{NSFS}/nsf=gw1")
        assert r.status_code == 200 and "hunter2" not in r.text
        before = running(ctl)
        r = op.put(f"{NSFS}/nsf=gw1/management/password", headers={"Content-Type": JSON_T},
                   content=json.dumps({f"{M}:password": "x"}))
        assert r.status_code == 403 and errors(r)[0]["error-tag"] == "access-denied"
        r = op.post(f"/operations/{M}:export-road-warrior", headers={"Content-Type": JSON_T},
                    content=json.dumps({f"{M}:input": {"name": "rw"}}))
        assert r.status_code == 403
        assert running(ctl) == before


def test_netconf_lock_blocks_restconf_edits(ctl: ControllerProcess, http: httpx.Client) -> None:
    post_nsf(http, "gw1")
    body = json.dumps({f"{M}:nsf": [{"name": "gw1", "dataplane": "userspace"}]})
    with ctl.netconf() as m:
        m.lock("running")
        r = http.patch(f"{NSFS}/nsf=gw1", headers={"Content-Type": JSON_T}, content=body)
        # RFC 6241: an edit of a datastore another session has locked is in-use
        assert r.status_code == 409 and errors(r)[0]["error-tag"] in ("in-use", "lock-denied")
        m.unlock("running")
    r = http.patch(f"{NSFS}/nsf=gw1", headers={"Content-Type": JSON_T}, content=body)
    assert r.status_code == 204


# ---- operations ------------------------------------------------------------------------------


def test_operations(ctl: ControllerProcess, http: httpx.Client) -> None:
    j = {"Content-Type": JSON_T}
    r = http.post(f"/operations/{M}:rekey-policy", headers=j,
                  content=json.dumps({f"{M}:input": {"policy": "nope"}}))
    assert r.status_code == 400 and errors(r)[0]["error-tag"] == "invalid-value"
    r = http.post(f"/operations/{M}:rekey-policy", headers=j,
                  content=json.dumps({f"{M}:input": {"policy": "nope", "bogus": 1}}))
    assert r.status_code == 400 and errors(r)[0]["error-tag"] == "unknown-element"
    r = http.post(f"/operations/{M}:rotate-ca", headers=j)
    assert r.status_code == 200, r.text
    serial = r.json()[f"{M}:output"]["serial"]
    assert int(serial, 16) > 0
    r = http.post(f"/operations/{M}:rotate-ca", headers={"Accept": XML_T})
    out = etree.fromstring(r.content)
    assert out.tag == f"{{{FP}}}output" and out.findtext(f"{{{FP}}}serial") != serial


# ---- event stream ------------------------------------------------------------------------------


def _read_events(resp: httpx.Response, want: int | str, out: list[str]) -> None:
    """Read events into `out` until `want` of them arrived (an int) or one containing
    `want` (a str). The test joins this thread before it closes the stream: a socket closed
    under a reading thread can have its descriptor reused by the test's next connection."""
    with contextlib.suppress(httpx.HTTPError):  # the server ended the stream
        _read_lines(resp, want, out)


def _read_lines(resp: httpx.Response, want: int | str, out: list[str]) -> None:
    buf: list[str] = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            buf.append(line[6:])
        elif line == "" and buf:
            out.append("\n".join(buf))
            buf = []
            if (len(out) >= want) if isinstance(want, int) else (want in out[-1]):
                return


@pytest.mark.parametrize("enc", ["json", "xml"])
def test_event_stream(ctl: ControllerProcess, http: httpx.Client, enc: str) -> None:
    events: list[str] = []
    with httpx.Client(verify=_tls(ctl), auth=("admin", ADMIN_PW), timeout=30) as c, \
            c.stream("GET", f"{ctl.base}/streams/NETCONF/{enc}",
                     headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = threading.Thread(target=_read_events, args=(resp, 1, events), daemon=True)
        reader.start()
        wait_until(lambda: _subscribed(ctl), 10, "the stream's subscription")
        assert post_nsf(http, "ev1").status_code == 201  # → netconf-config-change
        reader.join(20)
        assert not reader.is_alive(), "no event arrived"
    assert events
    if enc == "json":
        ev = json.loads(events[0])["ietf-restconf:notification"]
        assert ev["eventTime"]
        change = ev["ietf-netconf-notifications:netconf-config-change"]
        assert change["changed-by"]["username"] == "admin"
        assert any("flow-protection" in e["target"] for e in change["edit"])
    else:
        ev = etree.fromstring(events[0].encode())
        assert ev.tag == "{urn:ietf:params:xml:ns:netconf:notification:1.0}notification"
        assert "netconf-config-change" in events[0] and "flow-protection" in events[0]


def _subscribed(ctl: ControllerProcess) -> bool:
    r = httpx.get(f"http://127.0.0.1:{ctl.metrics_port}/metrics")
    return "i2nsf_controller_netconf_subscriptions 1.0" in r.text


def test_stream_replay_and_bad_stream(ctl: ControllerProcess, http: httpx.Client) -> None:
    # a config change while a stream is open is logged for replay (the server builds
    # netconf-config-change only when some subscription can receive it)
    first: list[str] = []
    with httpx.Client(verify=_tls(ctl), auth=("admin", ADMIN_PW), timeout=30) as c, \
            c.stream("GET", f"{ctl.base}/streams/NETCONF/json") as resp:
        reader = threading.Thread(target=_read_events, args=(resp, 1, first), daemon=True)
        reader.start()
        wait_until(lambda: _subscribed(ctl), 10, "the first stream's subscription")
        post_nsf(http, "rp1")
        reader.join(20)
        assert not reader.is_alive(), "no event on the first stream"
    assert first
    r = http.get("/streams/OTHER/json")
    assert r.status_code == 404
    r = http.get("/streams/NETCONF/json", params={"start-time": "yesterday"})
    assert r.status_code == 400
    events: list[str] = []
    with httpx.Client(verify=_tls(ctl), auth=("admin", ADMIN_PW), timeout=30) as c, \
            c.stream("GET", f"{ctl.base}/streams/NETCONF/json",
                     params={"start-time": "2000-01-01T00:00:00Z"}) as resp:
        reader = threading.Thread(target=_read_events, args=(resp, "replayComplete", events),
                                  daemon=True)
        reader.start()
        reader.join(20)
        assert not reader.is_alive(), "no replayComplete"
    # the config change made before the stream opened is replayed first
    done = next(i for i, e in enumerate(events) if "replayComplete" in e)
    assert any("netconf-config-change" in e for e in events[:done])
    # filter (RFC 8040 4.8.4): an XPath with module names as prefixes
    r = http.get("/streams/NETCONF/json", params={"filter": "]bad["})
    assert r.status_code == 400
    only: list[str] = []
    with httpx.Client(verify=_tls(ctl), auth=("admin", ADMIN_PW), timeout=30) as c, \
            c.stream("GET", f"{ctl.base}/streams/NETCONF/json", params={
                "start-time": "2000-01-01T00:00:00Z",
                "filter": "/i2nsf-flow-policy:policy-status-change"}) as resp:
        assert resp.status_code == 200
        reader = threading.Thread(target=_read_events, args=(resp, "replayComplete", only),
                                  daemon=True)
        reader.start()
        reader.join(20)
        assert not reader.is_alive(), "no replayComplete (filtered)"
    assert not any("netconf-config-change" in e for e in only)


# ---- curl ------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl(ctl: ControllerProcess) -> None:
    def curl(*args: str) -> tuple[int, str]:
        r = subprocess.run(["curl", "-sS", "--cacert", str(ctl.cert), "-u", f"admin:{ADMIN_PW}",
                            "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        body, _, code = r.stdout.rpartition("\n")
        assert code.isdigit(), (args, r.stdout, r.stderr)
        return int(code), body

    doc = json.dumps({f"{M}:nsf": [nsf("curl1")]})
    code, _ = curl("-X", "POST", "-H", f"Content-Type: {JSON_T}", "-d", doc, ctl.base + NSFS)
    assert code == 201
    code, body = curl("-H", f"Accept: {JSON_T}", f"{ctl.base}{NSFS}/nsf=curl1/data-plane-address")
    assert code == 200 and json.loads(body) == {f"{M}:data-plane-address": "198.51.100.1"}
    code, body = curl("-X", "PUT", "-H", f"Content-Type: {XML_T}", "-d",
                      f'<data-plane-address xmlns="{FP}">bad</data-plane-address>',
                      f"{ctl.base}{NSFS}/nsf=curl1/data-plane-address")
    assert code == 400 and "invalid-value" in body
    code, _ = curl("-X", "DELETE", f"{ctl.base}{NSFS}/nsf=curl1")
    assert code == 204
    # certificate checking is real: without the CA curl refuses
    r = subprocess.run(["curl", "-sS", f"{ctl.base}{NSFS}"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert Path(ctl.cert).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert oct(ctl.cert.with_suffix(".key").stat().st_mode & 0o777) == "0o600"


def test_controller_logs_json_lines(ctl: ControllerProcess) -> None:
    lines = [json.loads(ln) for ln in ctl.log.read_text().splitlines() if ln.startswith("{")]
    assert any("RESTCONF on https://127.0.0.1" in ln["message"] for ln in lines)
    assert all({"time", "level", "logger", "message"} <= set(ln) for ln in lines)
    assert all(ln["time"].endswith("Z") for ln in lines)


def test_given_certificate(tmp_path: Path) -> None:
    """[restconf] certificate_file/private_key_file: the server presents that certificate
    (and generates none)."""
    from cryptography import x509

    from netconf_core.restconf.tls import fingerprint, generate_self_signed

    cert, key = tmp_path / "given.crt", tmp_path / "given.key"
    generate_self_signed(cert, key, ["127.0.0.1", "ctl.test"])
    work = tmp_path / "w"
    work.mkdir()
    c = ControllerProcess(work, metrics=False, restconf_extra=(
        f'certificate_file = "{cert}"\nprivate_key_file = "{key}"\n')).start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        r = httpx.get(f"{c.base}/yang-library-version", verify=ctx, auth=("admin", ADMIN_PW))
        assert r.status_code == 200
        import socket

        with socket.create_connection(("127.0.0.1", c.rc_port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
        assert x509.load_der_x509_certificate(der) == x509.load_pem_x509_certificate(
            cert.read_bytes())
        assert fingerprint(cert).startswith("SHA256:")
        assert not c.cert.exists()  # nothing generated
    finally:
        c.stop()


def test_policy_status_change_as_json_event(tmp_path: Path) -> None:
    """The controller's own notification (i2nsf-flow-policy:policy-status-change) through
    the stream in RFC 7951 JSON: a policy between two NSFs that cannot be reached (its own
    controller: the policy cannot be removed from them afterwards)."""
    ctl = ControllerProcess(tmp_path).start()
    events: list[str] = []
    try:
        with httpx.Client(base_url=ctl.base, verify=_tls(ctl), auth=("admin", ADMIN_PW),
                          timeout=30) as http, \
                http.stream("GET", "/streams/NETCONF/json") as resp:
            reader = threading.Thread(target=_read_events, args=(
                resp, f"{M}:policy-status-change", events), daemon=True)
            reader.start()
            wait_until(lambda: _subscribed(ctl), 10, "the stream's subscription")
            assert post_nsf(http, "ps1").status_code == 201
            assert post_nsf(http, "ps2", dp="198.51.100.2",
                            prefix="203.0.113.0/24").status_code == 201
            doc = {f"{M}:flow-protection": {
                "crypto-profiles": {"crypto-profile": [{"name": "default"}]},
                "policies": {"policy": [{"name": "pp", "endpoint-a": {"nsf": "ps1"},
                                         "endpoint-b": {"nsf": "ps2"},
                                         "crypto-profile": "default"}]}}}
            r = http.patch("/data", content=json.dumps(doc), headers={"Content-Type": JSON_T})
            assert r.status_code == 204, r.text
            reader.join(30)
            assert not reader.is_alive(), "no policy-status-change event"
            # an open stream does not hold the controller's shutdown up
            t0 = time.monotonic()
            ctl.stop()
            assert time.monotonic() - t0 < 5
    finally:
        ctl.stop()
    ev = next(json.loads(e)["ietf-restconf:notification"] for e in events
              if f"{M}:policy-status-change" in e)
    change = ev[f"{M}:policy-status-change"]
    assert change["policy"] == "pp" and change["status"] in ("pending", "failed")


# ---- YANG Patch (RFC 8072) ------------------------------------------------------------------

YP_JSON = "application/yang-patch+json"


def test_yang_patch_all_or_nothing(ctl: ControllerProcess, http: httpx.Client) -> None:
    assert post_nsf(http, "gw1").status_code == 201
    patch = {"ietf-yang-patch:yang-patch": {"patch-id": "add-two", "edit": [
        {"edit-id": "e1", "operation": "create", "target": "/nsf=gw2",
         "value": {f"{M}:nsf": [nsf("gw2", "198.51.100.2")]}},
        {"edit-id": "e2", "operation": "merge", "target": "/nsf=gw1/dataplane",
         "value": {f"{M}:dataplane": "userspace"}},
        {"edit-id": "e3", "operation": "replace", "target": "/nsf=gw3",
         "value": {f"{M}:nsf": [nsf("gw3", "198.51.100.3")]}}]}}
    r = http.patch(NSFS, content=json.dumps(patch), headers={"Content-Type": YP_JSON})
    assert r.status_code == 200, r.text
    assert r.json() == {"ietf-yang-patch:yang-patch-status": {"patch-id": "add-two",
                                                              "ok": [None]}}
    names = sorted(n["name"] for n in http.get(NSFS).json()[f"{M}:nsfs"]["nsf"])
    assert names == ["gw1", "gw2", "gw3"]
    assert http.get(f"{NSFS}/nsf=gw1/dataplane").json() == {f"{M}:dataplane": "userspace"}
    before = running(ctl)
    # the second edit fails: the first (already made in the candidate) is not kept
    bad = {"ietf-yang-patch:yang-patch": {"patch-id": "bad", "edit": [
        {"edit-id": "ok-one", "operation": "create", "target": "/nsf=gw4",
         "value": {f"{M}:nsf": [nsf("gw4", "198.51.100.4")]}},
        {"edit-id": "dup", "operation": "create", "target": "/nsf=gw1",
         "value": {f"{M}:nsf": [nsf("gw1")]}},
        {"edit-id": "never", "operation": "delete", "target": "/nsf=gw2"}]}}
    r = http.patch(NSFS, content=json.dumps(bad), headers={"Content-Type": YP_JSON})
    assert r.status_code == 409, r.text
    st = r.json()["ietf-yang-patch:yang-patch-status"]
    edit = st["edit-status"]["edit"][0]
    assert edit["edit-id"] == "dup"
    assert edit["errors"]["error"][0]["error-tag"] == "data-exists"
    assert running(ctl) == before
    # a value the schema refuses: reported against its edit before anything is touched
    bad2 = {"ietf-yang-patch:yang-patch": {"patch-id": "b2", "edit": [
        {"edit-id": "v", "operation": "merge", "target": "/nsf=gw1/data-plane-address",
         "value": {f"{M}:data-plane-address": "nope"}}]}}
    r = http.patch(NSFS, content=json.dumps(bad2), headers={"Content-Type": YP_JSON})
    assert r.status_code == 400
    assert r.json()["ietf-yang-patch:yang-patch-status"]["edit-status"]["edit"][0][
        "edit-id"] == "v"
    assert running(ctl) == before
    # XML, with delete
    xml = ('<yang-patch xmlns="urn:ietf:params:xml:ns:yang:ietf-yang-patch">'
           "<patch-id>x1</patch-id><edit><edit-id>d</edit-id><operation>delete</operation>"
           "<target>/nsf=gw3</target></edit></yang-patch>")
    r = http.patch(NSFS, content=xml, headers={"Content-Type": "application/yang-patch+xml"})
    assert r.status_code == 200, r.text
    assert etree.fromstring(r.content).find(
        "{urn:ietf:params:xml:ns:yang:ietf-yang-patch}ok") is not None
    assert b"gw3" not in running(ctl)
    # while a NETCONF session holds the candidate, a YANG Patch is refused
    with ctl.netconf() as m:
        m.lock("candidate")
        r = http.patch(NSFS, content=xml, headers={"Content-Type":
                                                     "application/yang-patch+xml"})
        assert r.status_code == 409
        m.unlock("candidate")


def test_yang_patch_xml_error_status(ctl: ControllerProcess, http: httpx.Client) -> None:
    before = running(ctl)
    xml = ('<yang-patch xmlns="urn:ietf:params:xml:ns:yang:ietf-yang-patch">'
           "<patch-id>x2</patch-id><edit><edit-id>gone</edit-id><operation>delete"
           "</operation><target>/nsf=nothere</target></edit></yang-patch>")
    r = http.patch(NSFS, content=xml, headers={"Content-Type": "application/yang-patch+xml",
                                               "Accept": XML_T})
    assert r.status_code == 409, r.text
    yp = "{urn:ietf:params:xml:ns:yang:ietf-yang-patch}"
    st = etree.fromstring(r.content)
    assert st.tag == yp + "yang-patch-status" and st.findtext(yp + "patch-id") == "x2"
    edit = st.find(f"{yp}edit-status/{yp}edit")
    assert edit.findtext(yp + "edit-id") == "gone"
    assert edit.findtext(f"{yp}errors/{yp}error/{yp}error-tag") == "data-missing"
    assert running(ctl) == before


# ---- RFC 8341 NACM, shared with NETCONF ------------------------------------------------------

NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"


def test_nacm_rules_apply_to_restconf(tmp_path: Path) -> None:
    """Rules written over NETCONF govern RESTCONF: an exec rule (rpc), a read rule (data
    hidden), a write rule (edit refused, nothing changes), and the event stream."""
    ctl = ControllerProcess(tmp_path).start()
    try:
        with httpx.Client(base_url=ctl.base, verify=_tls(ctl), auth=("admin", ADMIN_PW),
                          timeout=30) as admin:
            assert post_nsf(admin, "gw1").status_code == 201
            prof = {f"{M}:crypto-profile": [{"name": "p1"}]}
            assert admin.post(f"/data/{M}:flow-protection/crypto-profiles",
                              content=json.dumps(prof),
                              headers={"Content-Type": JSON_T}).status_code == 201
        nacm = (f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><nacm '
                f'xmlns="{NACM_NS}"><enable-nacm>true</enable-nacm>'
                "<read-default>permit</read-default><write-default>permit</write-default>"
                "<exec-default>permit</exec-default><groups><group><name>ops</name>"
                "<user-name>oper</user-name></group></groups><rule-list><name>ops-rules"
                "</name><group>ops</group>"
                "<rule><name>no-rekey</name><module-name>i2nsf-flow-policy</module-name>"
                "<rpc-name>rekey-policy</rpc-name><access-operations>exec</access-operations>"
                "<action>deny</action></rule>"
                "<rule><name>no-profiles</name><path xmlns:fp=\"" + FP + "\">"
                "/fp:flow-protection/fp:crypto-profiles</path>"
                "<access-operations>read</access-operations><action>deny</action></rule>"
                "<rule><name>no-nsf-edits</name><path xmlns:fp=\"" + FP + "\">"
                "/fp:flow-protection/fp:nsfs</path>"
                "<access-operations>create update delete</access-operations>"
                "<action>deny</action></rule>"
                "</rule-list></nacm></config>")
        with ctl.netconf() as m:
            m.edit_config(target="running", config=nacm)
        before = running(ctl)
        j = {"Content-Type": JSON_T}
        with httpx.Client(base_url=ctl.base, verify=_tls(ctl), auth=("oper", OPER_PW),
                          timeout=30) as op:
            r = op.post(f"/operations/{M}:rekey-policy", headers=j,
                        content=json.dumps({f"{M}:input": {"policy": "x"}}))
            assert r.status_code == 403 and errors(r)[0]["error-tag"] == "access-denied"
            assert op.get(f"/data/{M}:flow-protection/crypto-profiles").status_code == 404
            assert op.get(f"{NSFS}/nsf=gw1").status_code == 200  # other data readable
            r = op.patch(f"{NSFS}/nsf=gw1", headers=j, content=json.dumps(
                {f"{M}:nsf": [{"name": "gw1", "dataplane": "userspace"}]}))
            assert r.status_code == 403 and errors(r)[0]["error-tag"] == "access-denied"
            assert running(ctl) == before
        # admin is in no group: the defaults (permit) apply
        with httpx.Client(base_url=ctl.base, verify=_tls(ctl), auth=("admin", ADMIN_PW),
                          timeout=30) as admin:
            assert admin.get(f"/data/{M}:flow-protection/crypto-profiles").status_code == 200
    finally:
        ctl.stop()


# ---- NMDA datastores (RFC 8527) ---------------------------------------------------------------

DS = "/ds/ietf-datastores:"


def test_nmda_datastores(ctl: ControllerProcess, http: httpx.Client) -> None:
    j = {"Content-Type": JSON_T}
    # an edit of the candidate leaves running alone until a NETCONF commit
    r = http.post(f"{DS}candidate/{M}:flow-protection/nsfs", headers=j,
                  content=json.dumps({f"{M}:nsf": [nsf("cand1")]}))
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{ctl.base}{DS}candidate/{M}:flow-protection/nsfs/nsf=cand1"
    assert http.get(f"{DS}candidate/{M}:flow-protection/nsfs/nsf=cand1").status_code == 200
    assert http.get(f"{DS}running/{M}:flow-protection/nsfs/nsf=cand1").status_code == 404
    assert b"cand1" not in running(ctl)
    with ctl.netconf() as m:
        m.commit()
    assert http.get(f"{DS}running/{M}:flow-protection/nsfs/nsf=cand1").status_code == 200
    # operational: configuration in use plus state, with origin on request
    op = http.get(f"{DS}operational/{M}:flow-protection/nsfs/nsf=cand1",
                  params={"with-origin": ""}).json()[f"{M}:nsf"][0]
    assert "session" in op
    run = http.get(f"{DS}running/{M}:flow-protection/nsfs/nsf=cand1").json()[f"{M}:nsf"][0]
    assert "session" not in run
    # read-only datastores refuse edits
    for ds in ("operational", "intended", "startup"):
        r = http.delete(f"{DS}{ds}/{M}:flow-protection/nsfs/nsf=cand1")
        assert r.status_code == 405, (ds, r.text)
    assert http.get(f"{DS}nope").status_code == 404
    r = http.get(f"{DS}running/{M}:flow-protection", params={"with-origin": ""})
    assert r.status_code == 400


def _client_cert(ca_key: Any, ca: Any, cn: str, tmp: Path) -> tuple[str, str]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    c, k = tmp / f"{cn}.crt", tmp / f"{cn}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(c), str(k)


def test_client_certificate_login(tmp_path: Path) -> None:
    """[restconf] client_ca_file: a client certificate from that CA logs in as the user
    its common name names (with that user's access rules); an unknown name is refused;
    basic auth keeps working for clients without a certificate."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test clients CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_file = tmp_path / "clients-ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    work = tmp_path / "w"
    work.mkdir()
    c = ControllerProcess(work, metrics=False,
                          restconf_extra=f'client_ca_file = "{ca_file}"\n').start()
    try:
        def client(cn: str | None) -> httpx.Client:
            ctx = ssl.create_default_context(cafile=str(c.cert))
            if cn is not None:
                ctx.load_cert_chain(*_client_cert(ca_key, ca, cn, tmp_path))
            return httpx.Client(base_url=c.base, verify=ctx, timeout=30)

        with client("oper") as op:
            assert op.get("/yang-library-version").status_code == 200
            assert post_nsf(op, "cc1", password="sekret-pw").status_code == 403  # read_secrets
        with client("admin") as adm:
            assert post_nsf(adm, "cc1", password="sekret-pw").status_code == 201
        with client("mallory") as bad:
            r = bad.get("/yang-library-version")
            assert r.status_code == 401 and "not a user" in r.text
        with client(None) as anon:
            assert anon.get("/yang-library-version").status_code == 401
            assert anon.get("/yang-library-version",
                            auth=("admin", ADMIN_PW)).status_code == 200
    finally:
        c.stop()


def test_with_defaults(ctl: ControllerProcess, http: httpx.Client) -> None:
    n = nsf("wd1")
    n["management"].pop("port")  # default 830
    assert http.post(NSFS, content=json.dumps({f"{M}:nsf": [n]}),
                     headers={"Content-Type": JSON_T}).status_code == 201
    url = f"{NSFS}/nsf=wd1/management"

    def get(mode: str, accept: str = JSON_T) -> httpx.Response:
        return http.get(url, params={"with-defaults": mode, "content": "config"},
                        headers={"Accept": accept})

    assert "port" not in get("explicit").json()[f"{M}:management"]
    assert get("report-all").json()[f"{M}:management"]["port"] == 830
    tagged = get("report-all-tagged").json()[f"{M}:management"]
    assert tagged["port"] == 830
    assert tagged["@port"] == {"ietf-netconf-with-defaults:default": True}
    el = etree.fromstring(get("report-all-tagged", XML_T).content)
    port = el.find(f"{{{FP}}}port")
    assert port.get("{urn:ietf:params:xml:ns:netconf:default:1.0}default") == "true"
    r = get("sometimes")
    assert r.status_code == 400 and errors(r)[0]["error-tag"] == "invalid-value"
