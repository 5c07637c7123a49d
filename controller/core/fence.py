"""The fencing epoch as NSFs see it (#21): every NSF transaction of an HA controller merges
`<controller-fence><epoch>N</epoch></controller-fence>` (module i2nsf-controller-fence) into
its edit; the agent refuses a commit that would lower the epoch it holds
(the agent's fence module), so a paused old leader cannot push stale SAs after a take-over.
"""

from __future__ import annotations

from lxml import etree

from netconf_core.i2nsf.namespaces import FENCE_NS


def fence_xml(epoch: int) -> bytes:
    return (f'<controller-fence xmlns="{FENCE_NS}"><epoch>{int(epoch)}</epoch>'
            "</controller-fence>").encode()


def add_fence(edit: etree._Element | bytes, epoch: int) -> etree._Element | bytes:
    """`edit` (a `<config>` element or its bytes) with the fence epoch merged in."""
    if isinstance(edit, bytes):
        end = edit.rstrip()
        if end.endswith(b"/>"):  # <config/>
            head = end[:-2]
            tag = head[1:].split(None, 1)[0].split(b">")[0]
            return head + b">" + fence_xml(epoch) + b"</" + tag + b">"
        cut = end.rindex(b"</")
        return end[:cut] + fence_xml(epoch) + end[cut:]
    out = etree.fromstring(etree.tostring(edit))
    out.append(etree.fromstring(fence_xml(epoch)))
    return out
