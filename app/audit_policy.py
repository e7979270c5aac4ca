"""What gets audited: the one table of endpoints and the audit event each one writes.

An audited route is one line here. ``audit_hooks.install`` starts each one's line when its
view is entered (with the fields below, from the URL), so the views only add what they
learn (validated filters, rows, what a delete removed) and never name an event.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Audited:
    """How one endpoint is audited."""

    event: str
    #: The fields its line starts with, in order: ``format`` (the URL's ``fmt``) and
    #: ``execution_id`` from the URL, any other None until the view notes it.
    fields: tuple[str, ...] = ()
    #: Whether a request refused for want of a token (401) is audited too.
    refused: bool = True
    #: False: the view starts the line itself (``audit_hooks.begin``), once it has read
    #: what the line needs (a job's body; a media file's type).
    at_start: bool = True


AUDITED: dict[str, Audited] = {
    "api.export_runs": Audited("export", ("filters", "format")),
    "api.export_run": Audited("export", ("execution_id", "format")),
    "api.link_runs": Audited("link_created", ("format", "filters")),
    "api.link_run": Audited("link_created", ("format", "execution_id")),
    "pages.download_runs": Audited("link_created", ("format", "filters")),   # the pages' download buttons
    "pages.download_run": Audited("link_created", ("format", "execution_id")),
    "api.download_link": Audited("link_used"),  # refused links (tampered, expired) too; fields once verified
    "api.delete_run": Audited("delete", ("execution_id",)),
    "pages.delete_run": Audited("delete", ("execution_id",)),
    "jobs.create_export_job": Audited("export_job", at_start=False),      # a malformed body is not audited
    "jobs.download_export_job": Audited("export_download", refused=False, at_start=False),
    "media.get_item_file": Audited("media", refused=False, at_start=False),  # 200/206 only, when the body closes
}

#: Which URL argument a field is read from.
URL_ARGUMENTS = {"format": "fmt", "execution_id": "execution_id"}
