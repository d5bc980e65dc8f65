"""Azure, read-only: which user-assigned identities a node's scale set or VM carries (ARM, with a
service principal's client-credentials token), and the claims of a token.

The same code reads the Azure simulator in the sandbox and Azure Resource Manager on a real
cluster; only the two endpoints differ."""

import base64
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PUBLIC_ARM = "https://management.azure.com/"
PUBLIC_AUTHORITY = "https://login.microsoftonline.com/"
ARM_RESOURCE = "https://management.azure.com/"
COMPUTE_API_VERSION = "2022-11-01"

_PROVIDER_ID = re.compile(
    r"^azure:///subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.Compute/(?:(?:virtualMachineScaleSets/(?P<vmss>[^/]+)/virtualMachines/[^/]+)"
    r"|(?:virtualMachines/(?P<vm>[^/]+)))$",
    re.IGNORECASE,
)


class AzureError(Exception):
    """An Azure AD or ARM call failed."""


def compute_id(provider_id):
    """The ARM id of the scale set (or standalone VM) behind a node's `spec.providerID`, or None
    for nodes that are not Azure VMs (kind)."""
    m = _PROVIDER_ID.match(provider_id or "")
    if not m:
        return None
    base = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/Microsoft.Compute"
    if m["vmss"]:
        return f"{base}/virtualMachineScaleSets/{m['vmss']}"
    return f"{base}/virtualMachines/{m['vm']}"


def jwt_claims(token):
    """The payload of a JWT (not verified: the issuer is the judge of that)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError) as e:
        raise AzureError(f"not a JWT: {e}") from e


class Arm:
    """Reads ARM as a service principal."""

    def __init__(self, arm_endpoint, authority, tenant_id, client_id, secret):
        self.arm = arm_endpoint.rstrip("/") + "/"
        self.authority = authority.rstrip("/") + "/"
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.secret = secret
        self._token = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def _bearer(self):
        with self._lock:
            if self._token and time.time() < self._expires - 60:
                return self._token
            form = urllib.parse.urlencode({
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.secret,
                "resource": ARM_RESOURCE,
            }).encode()
            url = f"{self.authority}{self.tenant_id}/oauth2/token"
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=form), timeout=30) as r:
                    doc = json.loads(r.read())
            except urllib.error.HTTPError as e:
                raise AzureError(
                    f"Azure AD refused the service principal {self.client_id}: {e.code} "
                    f"{e.read()[:300].decode('utf-8', 'replace')}") from e
            except (urllib.error.URLError, OSError) as e:
                raise AzureError(f"Azure AD at {url}: {e}") from e
            self._token = doc["access_token"]
            self._expires = time.time() + float(doc.get("expires_in", 300))
            return self._token

    def get(self, resource_id, api_version=COMPUTE_API_VERSION):
        url = f"{self.arm}{resource_id.lstrip('/')}?api-version={api_version}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._bearer()}"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AzureError(
                f"GET {resource_id}: {e.code} {e.read()[:300].decode('utf-8', 'replace')}") from e
        except (urllib.error.URLError, OSError) as e:
            raise AzureError(f"GET {url}: {e}") from e

    def user_assigned(self, compute):
        """Lower-cased resource ids of the user-assigned identities on a scale set or VM."""
        doc = self.get(compute)
        ids = ((doc.get("identity") or {}).get("userAssignedIdentities") or {}).keys()
        return {i.lower() for i in ids}
