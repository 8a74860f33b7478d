"""daphne's HTTP layer (twisted) parses a POST's multipart/form-data or urlencoded body into
`request.args` before the application runs. daphne never reads those (it hands the raw body
to the app), and twisted answers a multipart body it cannot split with an empty 400 of its
own: outside the API's one error shape, and memory spent on a body nobody uses. With that
parse off, every body reaches Django, whose API answers it (JSON only: a 415 in the shape)."""

from __future__ import annotations


def stop_form_parsing_in_daphne() -> None:
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # served by something else: nothing to do
        return
    if getattr(WebRequest, "vsb_form_parsing_off", False):
        return
    original = WebRequest.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False  # twisted's own switch (Request.__init__)

    WebRequest.__init__ = __init__
    WebRequest.vsb_form_parsing_off = True
