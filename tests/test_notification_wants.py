"""netconf-config-change (which costs a diff of running) is built only when a subscription
can receive it."""

from __future__ import annotations

from lxml import etree

from netconf_core.notifications import NotificationBus
from netconf_core.rpc import op_create_subscription

NCN = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
NOTIF = "urn:ietf:params:xml:ns:netconf:notification:1.0"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"


class Srv:
    def __init__(self) -> None:
        self.bus = NotificationBus()
        self.schema = None  # filters then work without schema lookups


class Sess:
    def __init__(self, sid: int) -> None:
        self.id = sid
        self.after_reply: list[object] = []

    def send_notification(self, msg: bytes) -> None:
        pass


def subscribe(srv: Srv, sid: int, filt: str) -> None:
    op = etree.fromstring(f'<create-subscription xmlns="{NOTIF}">{filt}</create-subscription>')
    op_create_subscription(srv, Sess(sid), op)  # type: ignore[arg-type]


def test_wants_follows_subtree_filters() -> None:
    srv = Srv()
    assert not srv.bus.wants(NCN, "netconf-config-change")
    subscribe(srv, 1, f'<filter xmlns="{NC}" type="subtree"><sadb-acquire xmlns="{IKELESS}"/>'
                      f'<sadb-expire xmlns="{IKELESS}"/></filter>')
    assert not srv.bus.wants(NCN, "netconf-config-change")
    assert srv.bus.wants(IKELESS, "sadb-expire")
    subscribe(srv, 2, f'<filter xmlns="{NC}" type="subtree"><netconf-config-change/></filter>')
    assert srv.bus.wants(NCN, "netconf-config-change")  # no namespace: matches any


def test_unfiltered_and_xpath_subscriptions_want_everything() -> None:
    srv = Srv()
    subscribe(srv, 1, f'<filter xmlns="{NC}" type="xpath" select="/*"/>')
    assert srv.bus.wants(NCN, "netconf-config-change")
    srv2 = Srv()
    subscribe(srv2, 1, "")
    assert srv2.bus.wants(NCN, "netconf-config-change")
