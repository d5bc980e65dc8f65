"""Judge: Azure's own Python SDK asks a (simulated) metadata service for a token.

azure-identity's ManagedIdentityCredential sends its request to AZURE_POD_IDENTITY_AUTHORITY_HOST
when that is set, which is how pods reach NMI; here it points at a simulated node's metadata
service. Prints {"token": ..., "expires_on": ...} on success; exits 1 with the SDK's error otherwise.
"""
import json
import os
import sys

from azure.identity import ManagedIdentityCredential

try:
    client_id = os.environ.get("CLIENT_ID") or None
    cred = ManagedIdentityCredential(client_id=client_id)
    tok = cred.get_token(os.environ["SCOPE"])
    print(json.dumps({"token": tok.token, "expires_on": tok.expires_on}))
except Exception as e:  # the SDK's exception text is what the test checks
    print(f"{type(e).__name__}: {e} (cause: {e.__cause__!r})", file=sys.stderr)
    sys.exit(1)
