"""The metrics endpoint: HEAD answered like GET without a body; HTTPS that requires a client certificate."""

from __future__ import annotations

import http.client
import ssl

import pytest
from prometheus_client import CollectorRegistry

from fixtures.tls import Pki
from fixtures.unbound import free_port
from ztdns.observe.endpoint import serve_metrics, tls_context
from ztdns.observe.metrics import Metrics, MetricsCollector, ProcessInfo


def _registry() -> CollectorRegistry:
    metrics = Metrics()
    info = ProcessInfo("9.9", lambda: ("c0de", "c0f1"))
    info.reloaded(True)
    info.reloaded(False)
    metrics.register(info)
    registry = CollectorRegistry()
    registry.register(MetricsCollector(lambda: metrics))
    return registry


def test_head_is_answered_and_get_serves_build_info() -> None:
    port = free_port()
    server = serve_metrics("127.0.0.1", port, _registry())
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("HEAD", "/metrics")
        head = connection.getresponse()
        assert head.status == 200 and head.read() == b""
        length = int(head.headers["Content-Length"])
        connection.request("GET", "/metrics")
        body = connection.getresponse().read().decode()
        assert len(body) == length
        assert 'ztdns_build_info{code_digest="c0de",config_digest="c0f1",version="9.9"} 1.0' in body
        assert 'ztdns_reloads_total{result="failure"} 1.0' in body and "ztdns_config_generation 2.0" in body
        connection.request("POST", "/metrics")
        assert connection.getresponse().status == 405
    finally:
        server.shutdown()


def test_https_endpoint_requires_a_client_certificate(pki: Pki) -> None:
    port = free_port()
    context = tls_context(str(pki.cert("server")), str(pki.key("server")), str(pki.ca))
    server = serve_metrics("127.0.0.1", port, _registry(), context)
    try:
        client = ssl.create_default_context(cafile=str(pki.ca))
        anonymous = http.client.HTTPSConnection("127.0.0.1", port, context=client, timeout=5)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            anonymous.request("GET", "/metrics")
            anonymous.getresponse().read()
        client.load_cert_chain(str(pki.cert("prod")), str(pki.key("prod")))
        scraper = http.client.HTTPSConnection("127.0.0.1", port, context=client, timeout=5)
        scraper.request("GET", "/metrics")
        response = scraper.getresponse()
        assert response.status == 200 and b"ztdns_build_info" in response.read()
    finally:
        server.shutdown()
