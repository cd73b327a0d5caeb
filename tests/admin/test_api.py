"""The admin API, called as a sans-IO function on a real server process object (``ztdns.daemon.Service``)."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from fixtures.admin import TOKENS, Setup, call, current_etag, payload, run
from ztdns.admin.api import ROUTES, AdminApi, Request, etag_of, problem
from ztdns.admin.toml import dumps, merge_patch
from ztdns.config import load_config
from ztdns.daemon import Service

JSON = {"content-type": "application/json"}
READS = ["/v1/config", "/v1/identities", "/v1/policies", "/v1/stats", "/v1/zones", "/v1/attestation", "/v1/session"]


def test_every_read_endpoint_answers_a_viewer(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        for path in READS:
            response = await call(api, "GET", path)
            assert response.status == 200, (path, response.body)
            assert dict(response.headers)["content-security-policy"].startswith("default-src 'self'")
        config = payload(await call(api, "GET", "/v1/config"))
        assert config["data"]["policies"]["web"]["deny"] == ["blocked.example.com"]
        assert config["etag"] == current_etag(service)
        identities = payload(await call(api, "GET", "/v1/identities"))
        assert identities["identities"][0] == {
            "name": "lan",
            "networks": ["127.0.0.0/8"],
            "certificates": [],
            "policies": ["web"],
        }
        policies = payload(await call(api, "GET", "/v1/policies"))
        assert policies["policies"][0]["used_by"] == ["lan"]
        assert payload(await call(api, "GET", "/v1/zones")) == {"zones": []}
        attestation = payload(await call(api, "GET", "/v1/attestation?nonce=00ff"))
        assert attestation["available"] and attestation["report"]["nonce"] == "00ff"

    run(admin_setup, check)


def test_stats_come_from_the_metrics(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        service.frontend.metrics.count("udp", "blocked", "NXDOMAIN", 0.001)
        service.frontend.metrics.count("udp", "local", "NOERROR", 0.001)
        stats = payload(await call(api, "GET", "/v1/stats"))
        assert stats["queries_total"] == 2
        assert stats["by_kind"] == {"blocked": 1, "local": 1}
        assert stats["by_transport"] == {"udp": 2}
        names = {sample["name"] for sample in stats["samples"]}
        assert {"ztdns_queries_total", "ztdns_cache_entries"} <= names

    run(admin_setup, check)


def test_explain_gives_the_facts_ztdns_explain_prints(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        blocked = payload(await call(api, "POST", "/v1/explain", {"client": "10.9.9.9", "name": "blocked.example.com"}))
        assert blocked["identity"] is None and blocked["decision"] == "refuse (no identity)"
        blocked = payload(
            await call(api, "POST", "/v1/explain", {"client": "127.0.0.1", "name": "blocked.example.com"})
        )
        assert blocked["identity"] == "lan"
        assert blocked["decision"] == "deny" and blocked["policy"] == "web"
        assert blocked["rule"] == "deny:blocked.example.com" and blocked["origin"] == "policies.web.deny[0]"
        assert blocked["rcode"] == "NXDOMAIN" and blocked["ede"][0]["code"] == 15
        listed = payload(await call(api, "POST", "/v1/explain", {"client": "lan", "name": "ads.example.com"}))
        assert listed["origin"] == "deny.txt:1 (policies.web.deny_lists[0])"
        bad = await call(api, "POST", "/v1/explain", {"client": "lan"})
        assert bad.status == 400

    run(admin_setup, check)


def test_roles_viewer_cannot_change_operator_can(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        text = admin_setup.config.read_text().replace('deny = ["blocked.example.com"]', "deny = []")
        headers = {"if-match": current_etag(service)}
        assert (await call(api, "PUT", "/v1/config", text.encode(), "viewer", headers)).status == 403
        assert admin_setup.config.read_text() != text
        response = await call(api, "PUT", "/v1/config", text.encode(), "operator", headers)
        assert response.status == 200, response.body
        assert payload(response)["etag"] == etag_of(text) == current_etag(service)
        assert admin_setup.config.read_text() == text  # written to the file
        explained = payload(await call(api, "POST", "/v1/explain", {"client": "lan", "name": "blocked.example.com"}))
        assert explained["decision"] == "allow"  # and applied: the running config answers
        audit = payload(await call(api, "GET", "/v1/audit", role="admin"))["entries"]
        change = next(e for e in audit if e["method"] == "PUT" and e["status"] == 200)
        assert change["who"] == "token:operator-token" and change["role"] == "operator"
        assert '-deny = ["blocked.example.com"]' in change["diff"]
        assert (await call(api, "GET", "/v1/audit", role="operator")).status == 403

    run(admin_setup, check)


def test_if_match_is_required_and_a_stale_etag_is_412(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        text = admin_setup.config.read_text().encode()
        assert (await call(api, "PUT", "/v1/config", text, "operator")).status == 428
        stale = await call(api, "PUT", "/v1/config", text, "operator", {"if-match": '"0000"'})
        assert stale.status == 412 and payload(stale)["etag"] == current_etag(service)
        stale_patch = await call(
            api, "PATCH", "/v1/config", {"cache": {"max_entries": 10}}, "operator", {"if-match": '"1"'}
        )
        assert stale_patch.status == 412

    run(admin_setup, check)


def test_a_bad_config_is_400_with_file_line_key_and_the_old_config_keeps_serving(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        before = admin_setup.config.read_text()
        etag = current_etag(service)
        bad = before.replace('deny = ["blocked.example.com"]', 'deny = ["*.*.bad"]')
        response = await call(api, "PUT", "/v1/config", bad.encode(), "operator", {"if-match": etag})
        assert response.status == 400
        (found,) = payload(response)["problems"]
        line = bad.splitlines().index('deny = ["*.*.bad"]') + 1
        assert found["file"] == str(admin_setup.config) and found["line"] == line
        assert found["key"] == "policies.web.deny[0]" and found["pointer"] == "/policies/web/deny/0"
        # A list file that does not exist: found by `ztdns check`'s verify step, after the schema.
        missing = before.replace('deny_lists = ["deny.txt"]', 'deny_lists = ["gone.txt"]')
        response = await call(api, "PUT", "/v1/config", missing.encode(), "operator", {"if-match": etag})
        assert response.status == 400
        assert payload(response)["problems"][0]["pointer"] == "/policies/web/deny_lists/0"
        assert admin_setup.config.read_text() == before and current_etag(service) == etag
        explained = payload(await call(api, "POST", "/v1/explain", {"client": "lan", "name": "blocked.example.com"}))
        assert explained["decision"] == "deny"

    run(admin_setup, check)


def test_patch_is_a_json_merge_patch_on_the_config_data(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        patch = {"policies": {"web": {"allow": ["**.example.com", "**.example.org"], "deny_lists": None}}}
        response = await call(api, "PATCH", "/v1/config", patch, "operator", {"if-match": current_etag(service)})
        assert response.status == 200, response.body
        data = tomllib.loads(admin_setup.config.read_text())
        assert data["policies"]["web"]["allow"] == ["**.example.com", "**.example.org"]
        assert "deny_lists" not in data["policies"]["web"]
        assert data["admin"]["tokens"][0]["name"] == "viewer-token"  # the rest survives the rewrite
        assert service.config.policies["web"].deny_lists == []
        bad = await call(api, "PATCH", "/v1/config", b"[1]", "operator", {"if-match": current_etag(service)})
        assert bad.status == 400

    run(admin_setup, check)


def test_only_admins_change_the_admin_section_and_tokens(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        patch = {"admin": {"session_seconds": 600}}
        headers = {"if-match": current_etag(service)}
        assert (await call(api, "PATCH", "/v1/config", patch, "operator", headers)).status == 403
        assert (await call(api, "POST", "/v1/tokens", {"name": "ci", "role": "viewer"}, "operator")).status == 403
        created = await call(api, "POST", "/v1/tokens", {"name": "ci", "role": "operator"}, "admin")
        assert created.status == 201, created.body
        token = payload(created)["token"]
        assert token not in admin_setup.config.read_text()  # only its hash is stored
        listed = payload(await call(api, "GET", "/v1/tokens", role="admin"))["tokens"]
        assert {"name": "ci", "role": "operator"} in listed
        response = await api.handle(Request("GET", "/v1/session", {"authorization": f"Bearer {token}"}))
        assert payload(response)["name"] == "token:ci"
        assert (await call(api, "DELETE", "/v1/tokens/ci", role="admin")).status == 200
        response = await api.handle(Request("GET", "/v1/session", {"authorization": f"Bearer {token}"}))
        assert response.status == 401

    run(admin_setup, check)


def test_certificate_identities_map_to_roles(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        alice = "spiffe://corp.example/admin/alice"
        response = await call(api, "GET", "/v1/tokens", role=None, identity=alice)
        assert response.status == 200
        bob = await call(api, "GET", "/v1/session", role=None, identity="spiffe://corp.example/ops/bob")
        assert payload(bob)["role"] == "operator" and payload(bob)["via"] == "mtls"
        stranger = await call(api, "GET", "/v1/stats", role=None, identity="spiffe://corp.example/guest/x")
        assert stranger.status == 403
        assert (await call(api, "GET", "/v1/stats", role=None)).status == 401

    run(admin_setup, check)


def test_sessions_need_the_csrf_token_and_logins_are_rate_limited(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        login = await api.handle(
            Request("POST", "/v1/session", JSON, json.dumps({"token": TOKENS["operator"]}).encode(), "192.0.2.1")
        )
        assert login.status == 200
        cookie = dict(login.headers)["set-cookie"]
        assert all(flag in cookie for flag in ("HttpOnly", "Secure", "SameSite=Strict"))
        session = {"cookie": cookie.split(";")[0]}
        csrf = payload(login)["csrf"]
        assert (await api.handle(Request("GET", "/v1/stats", session))).status == 200
        text = admin_setup.config.read_text().encode()
        put = {**session, "if-match": current_etag(service), "content-type": "application/toml"}
        assert (await api.handle(Request("PUT", "/v1/config", put, text))).status == 403
        assert (await api.handle(Request("PUT", "/v1/config", {**put, "x-csrf-token": "nope"}, text))).status == 403
        assert (await api.handle(Request("PUT", "/v1/config", {**put, "x-csrf-token": csrf}, text))).status == 200
        for _ in range(4):
            wrong = await api.handle(Request("POST", "/v1/session", JSON, b'{"token": "guess"}', "192.0.2.1"))
            assert wrong.status == 401
        limited = await api.handle(
            Request("POST", "/v1/session", JSON, json.dumps({"token": TOKENS["admin"]}).encode(), "192.0.2.1")
        )
        assert limited.status == 429
        other = await api.handle(
            Request("POST", "/v1/session", JSON, json.dumps({"token": TOKENS["admin"]}).encode(), "192.0.2.2")
        )
        assert other.status == 200

    run(admin_setup, check)


def test_console_assets_and_openapi(admin_setup: Setup) -> None:
    async def check(api: AdminApi, service: Service) -> None:
        page = await call(api, "GET", "/", role=None)
        assert page.status == 200 and page.content_type.startswith("text/html")
        assert b"<script" in page.body and b'src="/console.js"' in page.body
        document = payload(await call(api, "GET", "/v1/openapi.json", role=None))
        for route in ROUTES:
            assert route.method.lower() in document["paths"][route.path]
        assert "ExplainRequest" in document["components"]["schemas"]
        assert (await call(api, "GET", "/v1/nothing")).status == 404
        assert (await call(api, "DELETE", "/v1/config")).status == 405

    run(admin_setup, check)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.toml:12: policies.web.allow[3]: bad", ("a.toml", 12, "policies.web.allow[3]", "/policies/web/allow/3")),
        ("a.toml:?: listen[0]: x", ("a.toml", None, "listen[0]", "/listen/0")),
        ("a.toml:3: TOML syntax error: oops (column 2)", ("a.toml", 3, None, None)),
    ],
)
def test_problem_lines_become_structured(text: str, expected: tuple[object, ...]) -> None:
    found = problem(text)
    assert (found.file, found.line, found.key, found.pointer) == expected


def test_merge_patch_and_toml_round_trip() -> None:
    data = {
        "server": {"workers": 1},
        "listen": [{"transport": "udp", "address": "127.0.0.1:53"}],
        "policies": {"a b": {"allow": ["x.com", {"pattern": "y.com", "qtypes": ["A"]}]}},
        "identities": {"lan": {"networks": ["10.0.0.0/8"], "policies": ["a b"]}},
        "authority": {"zones": [{"name": "z.", "signing": {"csk": True}}]},
        "empty": {},
    }
    assert tomllib.loads(dumps(data)) == data
    assert merge_patch(data, {"server": None, "listen": [], "new": {"k": "\u00e9\n"}})["new"] == {"k": "\u00e9\n"}
    assert "server" not in merge_patch(data, {"server": None})


def test_console_assets_have_no_inline_code_and_never_write_html() -> None:
    """The CSP forbids inline scripts and styles; the page must not need them. Data goes in as text only."""
    from importlib import resources

    console = resources.files("ztdns.admin").joinpath("console")
    page = console.joinpath("index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="/console.js">']
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers
    script = console.joinpath("console.js").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, sink
    assert ".style." not in code  # inline styles would be blocked by the CSP


def test_changes_a_foreign_page_could_make_a_browser_send_are_refused(admin_setup: Setup) -> None:
    """A browser attaches an admin's client certificate to any request, SameSite or not."""

    async def check(api: AdminApi, service: Service) -> None:
        alice = "spiffe://corp.example/admin/alice"
        text = admin_setup.config.read_text().encode()
        base = {"if-match": current_etag(service), "host": "127.0.0.1:9443"}
        form = {**base, "content-type": "text/plain"}
        assert (await call(api, "PUT", "/v1/config", text, None, form, alice)).status == 415
        foreign = {**base, "content-type": "application/toml", "origin": "https://evil.example"}
        assert (await call(api, "PUT", "/v1/config", text, None, foreign, alice)).status == 403
        fetch = {**base, "content-type": "application/toml", "sec-fetch-site": "cross-site"}
        assert (await call(api, "PUT", "/v1/config", text, None, fetch, alice)).status == 403
        login = {"content-type": "text/plain", "origin": "https://127.0.0.1:9443", "host": "127.0.0.1:9443"}
        assert (await api.handle(Request("POST", "/v1/session", login, b'{"token": "x"}'))).status == 415
        own = {**base, "content-type": "application/toml", "origin": "https://127.0.0.1:9443"}
        assert (await call(api, "PUT", "/v1/config", text, None, own, alice)).status == 200

    run(admin_setup, check)


def test_zones_show_keys_rollover_state_and_ds(admin_setup: Setup) -> None:
    (admin_setup.directory / "corp.internal.zone").write_text(
        "$ORIGIN corp.internal.\n$TTL 300\n@ IN SOA ns hostmaster 7 3600 600 86400 300\n@ IN NS ns\nns IN A 10.0.0.1\n"
    )
    with admin_setup.config.open("a") as config:
        config.write(
            '\n[authority]\nresolver_view = true\n\n[[authority.zones]]\nname = "corp.internal"\n'
            'file = "corp.internal.zone"\n\n[authority.zones.signing]\nalgorithm = "ecdsap256sha256"\n'
        )

    async def check(api: AdminApi, service: Service) -> None:
        (zone,) = payload(await call(api, "GET", "/v1/zones"))["zones"]
        assert (zone["name"], zone["serial"], zone["signed"]) == ("corp.internal.", 7, True)
        roles = sorted(key["role"] for key in zone["keys"])
        assert roles == ["ksk", "zsk"]
        ksk = next(key for key in zone["keys"] if key["role"] == "ksk")
        assert ksk["state"] == "active" and ksk["publish"] <= ksk["created"] + 1  # a new zone starts signed
        (ds,) = zone["ds"]
        assert ds.startswith(f"corp.internal. IN DS {ksk['tag']} 13 2 ")

    run(admin_setup, check)


def test_check_reads_the_admin_listener_files(admin_setup: Setup) -> None:
    from ztdns.config import ConfigError
    from ztdns.daemon import verify

    (admin_setup.directory / "pki" / "admin-server.key").unlink()
    with pytest.raises(ConfigError) as problems:
        verify(load_config(admin_setup.config))
    line = admin_setup.config.read_text().splitlines().index('cert = "pki/admin-server.crt"') + 1
    assert str(problems.value).startswith(f"{admin_setup.config}:{line}: admin.cert: cannot load the admin certificate")
