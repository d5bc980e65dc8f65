"""Judge: azure-identity's WorkloadIdentityCredential, as a pod using Azure workload identity
runs it: the service-account token in a file (AZURE_FEDERATED_TOKEN_FILE), the identity's client
id and tenant (AZURE_CLIENT_ID, AZURE_TENANT_ID), and Azure AD at AZURE_AUTHORITY_HOST (here the
simulator's, over HTTPS, its CA trusted through REQUESTS_CA_BUNDLE). The credential is used as
shipped; instance discovery is off because the simulated authority is not a known cloud.
Prints {"token": ..., "expires_on": ...} on success; exits 1 with the SDK's error otherwise.
"""
import json
import os
import sys

from azure.identity import WorkloadIdentityCredential

try:
    cred = WorkloadIdentityCredential(
        authority=os.environ["AZURE_AUTHORITY_HOST"],
        disable_instance_discovery=True,
    )
    tok = cred.get_token(os.environ["SCOPE"])
    print(json.dumps({"token": tok.token, "expires_on": tok.expires_on}))
except Exception as e:  # the SDK's exception text is what the test checks
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
