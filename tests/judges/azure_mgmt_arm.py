"""Judge: Azure's own Python SDKs drive the simulated ARM and Azure AD over HTTPS.

azure-identity's ClientSecretCredential signs in at the simulated authority (MSAL tenant
discovery, client credentials), and azure-mgmt-compute reads a scale set, adds a user-assigned
identity with its long-running-operation poller, and reads the result back. The simulator's CA is
trusted through REQUESTS_CA_BUNDLE. Prints the final identity as JSON; exits 1 with the SDK's error.
"""
import json
import os
import sys

from azure.identity import ClientSecretCredential
from azure.mgmt.compute import ComputeManagementClient

env = os.environ
try:
    authority = env["SIM_ARM"].rstrip("/")
    cred = ClientSecretCredential(
        env["TENANT_ID"],
        env["CLIENT_ID"],
        env["CLIENT_SECRET"],
        authority=authority,
        disable_instance_discovery=True,
    )
    client = ComputeManagementClient(
        cred,
        env["SUBSCRIPTION_ID"],
        base_url=authority,
        credential_scopes=["https://management.azure.com/.default"],
        polling_interval=0,
    )
    rg, name = env["RESOURCE_GROUP"], env["VMSS"]
    before = client.virtual_machine_scale_sets.get(rg, name)
    poller = client.virtual_machine_scale_sets.begin_update(
        rg,
        name,
        {"identity": {"type": "UserAssigned", "userAssignedIdentities": {env["IDENTITY"]: {}}}},
    )
    poller.result()
    after = client.virtual_machine_scale_sets.get(rg, name)
    print(json.dumps({
        "before": before.identity.type if before.identity else None,
        "type": after.identity.type,
        "ids": list((after.identity.user_assigned_identities or {}).keys()),
        "clientIds": [v.client_id for v in (after.identity.user_assigned_identities or {}).values()],
    }))
except Exception as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
