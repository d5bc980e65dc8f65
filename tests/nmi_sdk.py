"""Judge: the unmodified Python azure-identity SDK against a running NMI.

Usage: python3 tests/nmi_sdk.py <source-ip> <client-id or ""> <scope>
AZURE_POD_IDENTITY_AUTHORITY_HOST must point at NMI. The SDK is used as shipped; only its HTTP
transport is given a session whose connections leave from <source-ip> (the "pod").
Prints one JSON line: {"ok": true, "token": ..., "expires_on": ...} or {"ok": false, "error": ...}.
"""
import json
import sys

import requests
from requests.adapters import HTTPAdapter
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ManagedIdentityCredential


class SourceAddressAdapter(HTTPAdapter):
    def __init__(self, source_ip, **kwargs):
        self._source = (source_ip, 0)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = self._source
        super().init_poolmanager(*args, **kwargs)


def main():
    source_ip, client_id, scope = sys.argv[1], sys.argv[2], sys.argv[3]
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", SourceAddressAdapter(source_ip))
    kwargs = {"transport": RequestsTransport(session=session), "retry_total": 0}
    if client_id:
        kwargs["client_id"] = client_id
    cred = ManagedIdentityCredential(**kwargs)
    try:
        tok = cred.get_token(scope)
        print(json.dumps({"ok": True, "token": tok.token, "expires_on": tok.expires_on}))
    except Exception as e:  # the SDK's own error types; report the message
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))


if __name__ == "__main__":
    main()
