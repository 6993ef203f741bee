"""The relay's /metrics text is read and differenced between two scrapes."""

from __future__ import annotations

import pytest

from loadtest.metrics import MetricsError, combine, difference, parse

BEFORE = """\
# TYPE linerelay_webhook_ack_seconds histogram
linerelay_webhook_ack_seconds_bucket{le="0.05"} 10.0
linerelay_webhook_ack_seconds_bucket{le="0.5"} 10.0
linerelay_webhook_ack_seconds_bucket{le="1.0"} 10.0
linerelay_webhook_ack_seconds_bucket{le="2.0"} 10.0
linerelay_webhook_ack_seconds_bucket{le="+Inf"} 10.0
linerelay_webhook_ack_seconds_count 10.0
linerelay_webhook_ack_seconds_sum 0.2
# TYPE linerelay_webhooks_total counter
linerelay_webhooks_total{outcome="accepted"} 10.0
# TYPE linerelay_bridges_connected gauge
linerelay_bridges_connected 0.0
"""

AFTER = """\
# TYPE linerelay_webhook_ack_seconds histogram
linerelay_webhook_ack_seconds_bucket{le="0.05"} 100.0
linerelay_webhook_ack_seconds_bucket{le="0.5"} 205.0
linerelay_webhook_ack_seconds_bucket{le="1.0"} 208.0
linerelay_webhook_ack_seconds_bucket{le="2.0"} 210.0
linerelay_webhook_ack_seconds_bucket{le="+Inf"} 210.0
linerelay_webhook_ack_seconds_count 210.0
linerelay_webhook_ack_seconds_sum 20.0
# TYPE linerelay_webhooks_total counter
linerelay_webhooks_total{outcome="accepted"} 205.0
linerelay_webhooks_total{outcome="invalid_signature"} 5.0
# TYPE linerelay_bridges_connected gauge
linerelay_bridges_connected 2.0
"""


def test_difference_reports_what_the_relay_counted_during_the_run() -> None:
    diff = difference(parse(BEFORE), parse(AFTER))
    assert diff["ack_count"] == 200
    assert diff["webhooks_by_outcome"] == {"accepted": 195, "invalid_signature": 5}
    assert diff["ack_p99_le_s"] == 1.0
    assert diff["ack_over_1s"] == 2
    assert diff["bridges_connected"] == 2


def test_without_a_first_scrape_the_totals_are_reported() -> None:
    assert difference(None, parse(AFTER))["ack_count"] == 210


def test_metrics_of_other_programs_leave_the_summary_empty() -> None:
    diff = difference(None, parse("# TYPE other counter\nother_total 3\n"))
    assert diff["ack_count"] == 0
    assert diff["ack_p99_le_s"] is None
    assert diff["bridges_connected"] is None


def test_text_that_is_not_prometheus_is_refused() -> None:
    with pytest.raises(MetricsError):
        parse("linerelay_webhooks_total{outcome= 3\n")


def test_several_nodes_add_up_before_the_difference_is_taken() -> None:
    one = parse(AFTER)
    both = combine([one, parse(AFTER)])
    assert both.ack_count == 420
    assert both.webhooks == {"accepted": 410, "invalid_signature": 10}
    assert both.bridges_connected == 4
    diff = difference(combine([parse(BEFORE), parse(BEFORE)]), both)
    assert diff["webhooks_by_outcome"]["accepted"] == 390
    assert diff["ack_p99_le_s"] == 1.0
    assert combine([]).bridges_connected is None
