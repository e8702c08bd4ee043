"""``BYOK_AMQP_URL`` with several nodes: parsing, validation (never quoting the value) and redaction."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from worker.amqp_urls import InvalidAmqpUrl, describe_nodes, parse_amqp_urls, redact_amqp_url
from worker.broker.connection import BrokerSupervisor
from worker.settings import InvalidSettings, ProcessSettings, load_settings

PASSWORD = "amqp-Cluster-Pa55word-77"
CLUSTER = (f"amqp://byok:{PASSWORD}@rabbit-1:5672/prod?heartbeat=10, amqp://byok:{PASSWORD}@rabbit-2:5673/prod,"
           "rabbit-3:5674,rabbit-4")


def test_one_url_is_one_node() -> None:
    (node,) = parse_amqp_urls("amqp://guest:guest@127.0.0.1:5672/")
    assert (node.url, node.host, node.port, node.address) == (
        "amqp://guest:guest@127.0.0.1:5672/", "127.0.0.1", 5672, "127.0.0.1:5672")


def test_several_nodes_in_order_and_short_entries_take_the_first_ones_credentials_and_vhost() -> None:
    nodes = parse_amqp_urls(CLUSTER)
    assert [n.address for n in nodes] == ["rabbit-1:5672", "rabbit-2:5673", "rabbit-3:5674", "rabbit-4:5672"]
    assert nodes[1].url == f"amqp://byok:{PASSWORD}@rabbit-2:5673/prod"
    assert nodes[2].url == f"amqp://byok:{PASSWORD}@rabbit-3:5674/prod?heartbeat=10"
    assert nodes[3].url == f"amqp://byok:{PASSWORD}@rabbit-4/prod?heartbeat=10"


def test_default_ports_by_scheme_and_ipv6_addresses() -> None:
    nodes = parse_amqp_urls("amqps://u:p@broker/vh,[::1]:5999")
    assert [n.address for n in nodes] == ["broker:5671", "[::1]:5999"]
    assert nodes[1].url == "amqps://u:p@[::1]:5999/vh"


@pytest.mark.parametrize(("value", "problem"), [
    (f"amqp://byok:{PASSWORD}@broker:notaport/", "not a URL (amqp://"),
    (f"http://byok:{PASSWORD}@broker/", "expected amqp://"),
    (f"amqp://byok:{PASSWORD}@a:5672/,,b:5672", "an empty entry"),
    (f"amqp://byok:{PASSWORD}@a:5672/,", "an empty entry"),
    (f"amqp://byok:{PASSWORD}@a:5672/,b:{PASSWORD}", "not a URL (node 2)"),
    (f"amqp://byok:{PASSWORD}@a:5672/,http://byok:{PASSWORD}@b/", "(node 2)"),
    (f"amqp://byok:{PASSWORD}@a:5672/,a", "listed twice"),
])
def test_invalid_lists_are_refused_without_quoting_them(value: str, problem: str) -> None:
    with pytest.raises(InvalidAmqpUrl) as refused:
        parse_amqp_urls(value)
    assert problem in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_the_setting_takes_a_list_and_refuses_a_bad_one_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_AMQP_URL", CLUSTER)
    assert load_settings(ProcessSettings).amqp_url.get_secret_value() == CLUSTER
    monkeypatch.setenv("BYOK_AMQP_URL", f"amqp://byok:{PASSWORD}@a:5672/,ftp://b")
    with pytest.raises(InvalidSettings) as refused:
        load_settings(ProcessSettings)
    assert str(refused.value).startswith("invalid settings: BYOK_AMQP_URL: expected amqp://")
    assert PASSWORD not in str(refused.value)


def test_redaction_hides_every_password_and_keeps_the_rest() -> None:
    redacted = redact_amqp_url(CLUSTER)
    assert PASSWORD not in redacted
    assert redacted == ("amqp://byok:***@rabbit-1:5672/prod?heartbeat=10,amqp://byok:***@rabbit-2:5673/prod,"
                        "rabbit-3:5674,rabbit-4")
    assert redact_amqp_url("amqp://guest@h/") == "amqp://guest@h/"
    assert describe_nodes(CLUSTER) == "rabbit-1:5672, rabbit-2:5673, rabbit-3:5674, rabbit-4:5672"
    assert describe_nodes(f"nonsense {PASSWORD}") == "the broker in BYOK_AMQP_URL"


def test_the_supervisor_tries_nodes_in_order_and_the_one_just_lost_last() -> None:
    supervisor = BrokerSupervisor(SecretStr(CLUSTER), reconnect_max_s=1.0, process="test")
    nodes = parse_amqp_urls(CLUSTER)
    assert supervisor._order() == list(nodes)
    supervisor._last_lost = nodes[0]
    assert supervisor._order() == [nodes[1], nodes[2], nodes[3], nodes[0]]
    supervisor._last_lost = nodes[2]
    assert supervisor._order() == [nodes[0], nodes[1], nodes[3], nodes[2]]
