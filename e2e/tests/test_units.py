"""Unit tests of the suite's pure parts: what it parses (curl's answers, flags, durations,
identity files, provider ids) and decides (identity allocation, missing configuration), and the
exact command it runs in a pod on a real cluster. Run: python3 -m unittest discover e2e/tests"""

import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aadpi_e2e import azure, backends, cli, config  # noqa: E402
from aadpi_e2e.scenarios import SCENARIOS, select  # noqa: E402

RID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}"
CID = "00000000-0000-0000-0000-00000000000{}"


def write(doc):
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(doc, f)
    f.close()
    return f.name


class CurlAnswers(unittest.TestCase):
    def test_status_headers_and_body_of_an_include_answer(self):
        out = ("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 20\r\nContent-Type: text/plain\r\n\r\n"
               "no identity\n")
        a = backends.parse_curl_include(out)
        self.assertEqual((a.status, a.headers["retry-after"], a.body), (503, "20", "no identity\n"))

    def test_a_continue_head_is_skipped(self):
        out = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        a = backends.parse_curl_include(out)
        self.assertEqual((a.status, a.body), (200, "{}"))

    def test_anything_else_is_no_answer(self):
        a = backends.parse_curl_include("curl: (7) Failed to connect")
        self.assertEqual(a.status, 0)
        self.assertIn("not an HTTP answer", a.error)


class ClusterCommand(unittest.TestCase):
    def test_the_pod_asks_the_metadata_address_with_curl_in_its_validator_container(self):
        b = object.__new__(backends.ClusterBackend)
        pod = {"metadata": {"namespace": "ns", "name": "p"}}
        argv = b.curl_argv(pod, backends.token_path("cid"), {"Metadata": "true"}, 110)
        self.assertEqual(argv[:8], ["exec", "-n", "ns", "p", "-c", "validator", "--", "curl"])
        self.assertIn("Metadata: true", argv)
        self.assertEqual(argv[argv.index("--max-time") + 1], "110")
        self.assertEqual(
            argv[-1],
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01"
            "&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id=cid")


class SandboxFlags(unittest.TestCase):
    def test_extra_flags_replace_the_suites_own_for_the_same_setting(self):
        flags = backends.sandbox_flags(["--nmi-arg=--block-instance-metadata=false", "--faults=flaky",
                                        "--arm-latency=1s"])
        self.assertNotIn("--nmi-arg=--block-instance-metadata", flags)
        self.assertNotIn("--arm-latency=100ms", flags)
        self.assertIn("--nmi-arg=--set-retry-after-header", flags)
        self.assertEqual(flags[-3:], ["--nmi-arg=--block-instance-metadata=false", "--faults=flaky",
                                      "--arm-latency=1s"])


class Flags(unittest.TestCase):
    def test_equals_and_bare_flags_later_ones_win(self):
        f = config.parse_flags(["nmi", "--node=$(NODE_NAME)", "--block-instance-metadata",
                                "--retry-attempts-for-created=2", "--retry-attempts-for-created=3"])
        self.assertEqual(f["node"], "$(NODE_NAME)")
        self.assertIs(f["block-instance-metadata"], True)
        self.assertEqual(f["retry-attempts-for-created"], "3")

    def test_go_durations(self):
        self.assertEqual(config.go_duration("2000ms"), 2.0)
        self.assertEqual(config.go_duration("1m30s"), 90.0)
        self.assertEqual(config.go_duration("15"), 15.0)
        with self.assertRaises(config.ConfigError):
            config.go_duration("15 parsecs")

    def test_installation_defaults_are_the_binaries(self):
        i = config.Installation("ns", "a=b", 2, {}, "ns", "a=c", {})
        self.assertEqual(i.lease, ("default", "aad-pod-identity-mic"))
        self.assertEqual((i.lease_duration, i.unassign_grace, i.nmi_wait), (15.0, 60.0, 100.0))
        self.assertTrue(i.mic_namespaced and i.nmi_namespaced)
        self.assertFalse(i.block_instance_metadata or i.set_retry_after_header)
        i = config.Installation("ns", "", 1, {"forceNamespaced": "false", "unassign-grace-period": "2s"}, "ns", "",
                                {"block-instance-metadata": "true", "find-identity-retry-interval": "1",
                                 "retry-attempts-for-created": "2", "retry-attempts-for-assigned": "1"})
        self.assertFalse(i.mic_namespaced)
        self.assertTrue(i.block_instance_metadata)
        self.assertEqual((i.unassign_grace, i.nmi_wait), (2.0, 3.0))


class IdentityFile(unittest.TestCase):
    def test_our_format(self):
        path = write({"tenantID": "t", "identities": [{"name": "a", "resourceID": RID.format("a"),
                                                        "clientID": CID.format(1)}],
                      "servicePrincipal": {"clientID": CID.format(2), "clientSecret": "s"}})
        g = config.load_identity_file(path, env={})
        self.assertEqual(g.identities, [config.Identity("a", RID.format("a"), CID.format(1))])
        self.assertEqual(g.service_principal, config.ServicePrincipal("t", CID.format(2), "s"))

    def test_az_identity_list_output_and_a_secret_from_the_environment(self):
        az = [{"id": RID.format("e2e-0"), "clientId": CID.format(1), "name": "e2e-0", "tenantId": "t"}]
        path = write({"identities": az, "servicePrincipal": {"appId": CID.format(2)}})
        g = config.load_identity_file(path, env={"E2E_SP_CLIENT_SECRET": "from-env"})
        self.assertEqual(g.identities[0].name, "e2e-0")
        self.assertEqual(g.service_principal, config.ServicePrincipal("t", CID.format(2), "from-env"))

    def test_what_is_wrong_is_named(self):
        cases = [
            ({"identities": [{"resourceID": "/x", "clientID": CID.format(1)}]}, "resourceID"),
            ({"identities": [{"resourceID": RID.format("a"), "clientID": "nope"}]}, "clientID"),
            ({"identities": [], "servicePrincipal": {"clientID": CID.format(1)}}, "clientSecret"),
            ({"nothing": 1}, "'identities' list"),
        ]
        for doc, words in cases:
            with self.assertRaises(config.ConfigError) as e:
                config.load_identity_file(write(doc), env={})
            self.assertIn(words, str(e.exception))
        with self.assertRaises(config.ConfigError) as e:
            config.load_identity_file("/nonexistent/ids.json", env={})
        self.assertIn("/nonexistent/ids.json", str(e.exception))


class Decisions(unittest.TestCase):
    def identities(self, n):
        return [config.Identity(f"i{k}", RID.format(k), CID.format(k % 10)) for k in range(n)]

    def test_side_by_side_scenarios_get_disjoint_identities(self):
        chosen = select()
        need = sum(s.identities for s in chosen)
        got = cli.allocate(chosen, self.identities(need), jobs=4)
        flat = [i for s in chosen for i in got[s.name]]
        self.assertEqual(len(flat), len(set(flat)))
        with self.assertRaises(config.ConfigError) as e:
            cli.allocate(chosen, self.identities(need - 1), jobs=4)
        self.assertIn("--jobs 1", str(e.exception))

    def test_one_after_another_they_reuse_the_first_ones(self):
        chosen = select()
        widest = max(s.identities for s in chosen)
        got = cli.allocate(chosen, self.identities(widest), jobs=1)
        self.assertEqual(got["multiple-identities"], self.identities(widest)[:5])
        with self.assertRaises(config.ConfigError) as e:
            cli.allocate(chosen, self.identities(widest - 1), jobs=1)
        self.assertIn("multiple-identities", str(e.exception))

    def test_a_missing_service_principal_names_the_scenarios_that_need_it(self):
        missing = cli.check_needs(select(), config.Given(identities=[]))
        text = " ".join(missing)
        for name in ("service-principal", "in-use-protection", "single-identity"):
            self.assertIn(name, text)
        self.assertEqual(cli.check_needs(select(only=["liveness"]), config.Given(identities=[])), [])

    def test_scenario_names_are_checked(self):
        with self.assertRaises(ValueError):
            select(only=["no-such-scenario"])
        self.assertEqual(len({s.name for s in SCENARIOS}), len(SCENARIOS))


class Skips(unittest.TestCase):
    def test_a_real_arm_cannot_be_throttled_so_that_scenario_is_skipped_saying_why(self):
        from aadpi_e2e.context import Skipped
        self.assertIs(backends.ClusterBackend.throttle_arm, backends.Backend.throttle_arm)
        with self.assertRaises(Skipped) as e:
            backends.Backend.throttle_arm(None, 4)
        self.assertIn("real ARM", str(e.exception))
        with self.assertRaises(Skipped):
            backends.Backend.arm_requests(None)

    def test_the_table_gives_a_skipped_scenarios_reason_and_counts_it(self):
        text = cli.table([{"name": "arm-retry-after", "result": "SKIP", "seconds": 0.1, "reason": "why"},
                          {"name": "liveness", "result": "PASS", "seconds": 1.5}], 2.0, "cluster")
        self.assertIn("arm-retry-after  SKIP", text)
        self.assertIn("(why)", text)
        self.assertIn("1 passed, 0 failed, 1 skipped", text)


class Azure(unittest.TestCase):
    def test_provider_ids(self):
        vmss = ("azure:///subscriptions/s/resourceGroups/MC_rg/providers/Microsoft.Compute/"
                "virtualMachineScaleSets/aks-pool-1/virtualMachines/3")
        self.assertEqual(azure.compute_id(vmss), "/subscriptions/s/resourceGroups/MC_rg/providers/"
                                                 "Microsoft.Compute/virtualMachineScaleSets/aks-pool-1")
        vm = "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-0"
        self.assertTrue(azure.compute_id(vm).endswith("/virtualMachines/vm-0"))
        self.assertIsNone(azure.compute_id("kind://docker/kind/kind-worker"))
        self.assertIsNone(azure.compute_id(None))

    def test_jwt_claims(self):
        import base64
        payload = base64.urlsafe_b64encode(json.dumps({"appid": "x"}).encode()).decode().rstrip("=")
        self.assertEqual(azure.jwt_claims(f"h.{payload}.s"), {"appid": "x"})
        with self.assertRaises(azure.AzureError):
            azure.jwt_claims("not-a-token")


if __name__ == "__main__":
    unittest.main()
