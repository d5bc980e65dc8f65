//! `kubectl create` for workload kinds against the Kubernetes simulator: kubectl's typed
//! clients send these bodies as protobuf, which the simulator decodes from its message
//! descriptors. The real `kubectl` is the judge; `kubectl get -o json` shows what was
//! stored, and the simulator's cluster (scheduler, kubelet, controllers) runs the workloads.
//! Rich pod specs make a round trip — applied as JSON, read back by kubectl into Go types and
//! re-sent in protobuf by `kubectl create job --from` and `kubectl debug --copy-to` — and must
//! come out unchanged. Raw HTTP covers what kubectl does not send in protobuf (`kubectl run`
//! sends JSON): a Pod, a Node, a custom resource (415, as on a real server) and corrupt
//! bodies. `kubectl drain --disable-eviction` sends its DELETE bodies in protobuf, and CronJob
//! schedules a real API server refuses are refused.

use std::time::Duration;

use aad_pod_identity_sim::kube::KubeSimConfig;
use base64::Engine;
use serde_json::Value;

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

mod support;
use support::kubectl::KubectlEnv;

/// The simulator with its cluster running, and kubectl helpers for these tests.
struct Env(KubectlEnv);

impl std::ops::Deref for Env {
    type Target = KubectlEnv;
    fn deref(&self) -> &KubectlEnv {
        &self.0
    }
}

impl Env {
    async fn start() -> Self {
        Self(
            KubectlEnv::start(
                KubeSimConfig {
                    job_pod_run_time: Duration::from_millis(300),
                    run_cluster: true,
                    ..KubeSimConfig::default()
                },
                "kube-sim-create",
            )
            .await,
        )
    }

    /// Runs kubectl; panics with its output unless it succeeds.
    async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// Runs kubectl; panics unless it fails, and returns its stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let (ok, _, stderr) = self.run(args).await;
        assert!(!ok, "kubectl {args:?} succeeded");
        stderr
    }

    /// Runs a `kubectl create ...` with request logging and checks that its POST carried a
    /// protobuf body (so the test is about the protobuf path, not a JSON fallback).
    async fn create_in_protobuf(&self, args: &[&str]) {
        self.sends_protobuf("POST", args).await;
    }

    /// Runs kubectl with request logging; panics unless it succeeds and its first `verb`
    /// request's `Content-Type` was protobuf.
    async fn sends_protobuf(&self, verb: &str, args: &[&str]) {
        let mut all = vec!["-v=8"];
        all.extend_from_slice(args);
        let out = tokio::time::timeout(Duration::from_secs(90), self.cmd(&all).output())
            .await
            .expect("kubectl finishes")
            .expect("kubectl runs");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "kubectl {args:?} failed:\n{stderr}");
        let verb_line = format!("verb=\"{verb}\"");
        let request = stderr
            .lines()
            .position(|l| l.contains("\"Request\"") && l.contains(&verb_line))
            .unwrap_or_else(|| panic!("no {verb} logged by kubectl {args:?}:\n{stderr}"));
        // The request's headers follow its line, up to the closing `>`.
        let headers: Vec<&str> = stderr
            .lines()
            .skip(request + 1)
            .take_while(|l| l.trim() != ">")
            .collect();
        assert!(
            headers
                .iter()
                .any(|h| h.trim() == format!("Content-Type: {PROTOBUF}")),
            "kubectl {args:?} did not send its {verb} in protobuf:\n{}",
            headers.join("\n")
        );
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all).await).expect("kubectl prints JSON")
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

fn container(obj: &Value, path: &str) -> Value {
    obj.pointer(path)
        .and_then(|c| c.get(0))
        .cloned()
        .unwrap_or_else(|| panic!("no container at {path} in {obj}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_deployments_jobs_and_cronjobs_in_protobuf_and_they_run() {
    let env = Env::start().await;

    env.create_in_protobuf(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
    ])
    .await;
    let web = env.json(&["get", "deployment", "web"]).await;
    assert_eq!(web["spec"]["replicas"], 2, "{web}");
    assert_eq!(
        web["spec"]["selector"]["matchLabels"]["app"], "web",
        "{web}"
    );
    assert_eq!(web["spec"]["template"]["metadata"]["labels"]["app"], "web");
    let c = container(&web, "/spec/template/spec/containers");
    assert_eq!(
        (c["name"].as_str(), c["image"].as_str()),
        (Some("nginx"), Some("nginx"))
    );
    // The cluster runs it: two ready pods carrying the template's labels and image.
    env.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    let pods = env.json(&["get", "pods", "-l", "app=web"]).await;
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{pods}");
    for p in items {
        assert_eq!(p["status"]["phase"], "Running", "{p}");
        assert_eq!(container(p, "/spec/containers")["image"], "nginx");
    }

    env.create_in_protobuf(&[
        "create",
        "job",
        "j",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "echo hi",
    ])
    .await;
    let j = env.json(&["get", "job", "j"]).await;
    let c = container(&j, "/spec/template/spec/containers");
    assert_eq!(c["image"], "busybox");
    assert_eq!(c["command"], serde_json::json!(["sh", "-c", "echo hi"]));
    assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
    env.ok(&["wait", "--for=condition=complete", "job/j", "--timeout=60s"])
        .await;

    env.create_in_protobuf(&[
        "create",
        "cronjob",
        "c",
        "--image=busybox",
        "--schedule=*/1 * * * *",
        "--",
        "sh",
        "-c",
        "true",
    ])
    .await;
    let cj = env.json(&["get", "cronjob", "c"]).await;
    assert_eq!(cj["spec"]["schedule"], "*/1 * * * *", "{cj}");
    let c = container(&cj, "/spec/jobTemplate/spec/template/spec/containers");
    assert_eq!(c["command"], serde_json::json!(["sh", "-c", "true"]));
    assert_eq!(
        cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"],
        "OnFailure"
    );

    // kubectl reads the CronJob, builds a Job owned by it and sends that in protobuf.
    env.create_in_protobuf(&["create", "job", "j2", "--from=cronjob/c"])
        .await;
    let j2 = env.json(&["get", "job", "j2"]).await;
    let owners = j2["metadata"]["ownerReferences"]
        .as_array()
        .expect("owners");
    assert_eq!(owners.len(), 1, "{j2}");
    assert_eq!(owners[0]["kind"], "CronJob");
    assert_eq!(owners[0]["apiVersion"], "batch/v1");
    assert_eq!(owners[0]["name"], "c");
    assert_eq!(owners[0]["uid"], cj["metadata"]["uid"]);
    assert_eq!(owners[0]["controller"], true);
    assert_eq!(
        j2["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    let c = container(&j2, "/spec/template/spec/containers");
    assert_eq!(c["command"], serde_json::json!(["sh", "-c", "true"]));
    env.ok(&[
        "wait",
        "--for=condition=complete",
        "job/j2",
        "--timeout=60s",
    ])
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_services_in_protobuf() {
    let env = Env::start().await;
    env.create_in_protobuf(&["create", "service", "clusterip", "web", "--tcp=80:8080"])
        .await;
    let svc = env.json(&["get", "service", "web"]).await;
    let port = &svc["spec"]["ports"][0];
    assert_eq!(
        (port["port"].as_i64(), port["targetPort"].as_i64()),
        (Some(80), Some(8080)),
        "{svc}"
    );
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_variants_keep_their_fields() {
    let env = Env::start().await;
    env.create_in_protobuf(&[
        "create",
        "secret",
        "docker-registry",
        "reg",
        "--docker-server=registry.example",
        "--docker-username=u",
        "--docker-password=p",
    ])
    .await;
    let reg = env.json(&["get", "secret", "reg"]).await;
    assert_eq!(reg["type"], "kubernetes.io/dockerconfigjson");
    let cfg = reg["data"][".dockerconfigjson"].as_str().expect("config");
    let cfg = base64::engine::general_purpose::STANDARD
        .decode(cfg)
        .unwrap();
    let cfg: Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(cfg["auths"]["registry.example"]["username"], "u", "{cfg}");

    let blob = env.dir.join("blob.bin");
    std::fs::write(&blob, [0u8, 0xff, 0xfe, 7]).unwrap();
    let from = format!("--from-file=blob={}", blob.display());
    env.create_in_protobuf(&[
        "create",
        "configmap",
        "bin",
        &from,
        "--from-literal=mode=slow",
    ])
    .await;
    let bin = env.json(&["get", "configmap", "bin"]).await;
    assert_eq!(bin["binaryData"]["blob"], "AP/+Bw==", "{bin}");
    assert_eq!(bin["data"]["mode"], "slow");

    env.create_in_protobuf(&[
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=80:8080",
        "--node-port=30080",
    ])
    .await;
    let np = env.json(&["get", "service", "np"]).await;
    assert_eq!(np["spec"]["type"], "NodePort");
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080, "{np}");
    env.create_in_protobuf(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name=example.com",
    ])
    .await;
    let ext = env.json(&["get", "service", "ext"]).await;
    assert_eq!(ext["spec"]["externalName"], "example.com", "{ext}");

    env.create_in_protobuf(&["create", "deployment", "p80", "--image=nginx", "--port=80"])
        .await;
    let p80 = env.json(&["get", "deployment", "p80"]).await;
    let c = container(&p80, "/spec/template/spec/containers");
    assert_eq!(c["ports"][0]["containerPort"], 80, "{p80}");
    env.create_in_protobuf(&[
        "create",
        "cronjob",
        "nightly",
        "--image=busybox",
        "--schedule=0 3 * * *",
        "--restart=Never",
    ])
    .await;
    let nightly = env.json(&["get", "cronjob", "nightly"]).await;
    assert_eq!(
        nightly["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"],
        "Never"
    );
    env.stop().await;
}

/// A CronJob applied as YAML (JSON on the wire) with a pod template using much of the
/// described schema; `kubectl create job --from` reads it back into Go types and sends the
/// Job in protobuf, so the Job's pod spec equals the CronJob's only if every field survived
/// the decoder.
const RICH_CRONJOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: rich
spec:
  schedule: "0 0 1 1 *"
  timeZone: Etc/UTC
  startingDeadlineSeconds: 60
  concurrencyPolicy: Forbid
  suspend: true
  successfulJobsHistoryLimit: 2
  failedJobsHistoryLimit: 0
  jobTemplate:
    metadata:
      labels: {tier: batch}
    spec:
      backoffLimit: 2
      activeDeadlineSeconds: 600
      ttlSecondsAfterFinished: 30
      template:
        metadata:
          labels: {app: rich}
          annotations: {note: "a b"}
        spec:
          restartPolicy: Never
          serviceAccountName: runner
          automountServiceAccountToken: false
          terminationGracePeriodSeconds: 5
          dnsPolicy: ClusterFirst
          nodeSelector: {kubernetes.io/os: linux}
          priorityClassName: low
          enableServiceLinks: false
          hostAliases:
          - ip: 127.0.0.1
            hostnames: [foo.local, bar.local]
          securityContext:
            runAsUser: 1000
            runAsGroup: 3000
            runAsNonRoot: true
            fsGroup: 2000
            supplementalGroups: [4000, 5000]
            seccompProfile: {type: RuntimeDefault}
            sysctls:
            - {name: net.ipv4.ip_local_port_range, value: "1024 65000"}
          tolerations:
          - {key: dedicated, operator: Equal, value: batch, effect: NoSchedule}
          - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 30}
          affinity:
            nodeAffinity:
              requiredDuringSchedulingIgnoredDuringExecution:
                nodeSelectorTerms:
                - matchExpressions:
                  - {key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}
            podAntiAffinity:
              preferredDuringSchedulingIgnoredDuringExecution:
              - weight: 50
                podAffinityTerm:
                  topologyKey: kubernetes.io/hostname
                  labelSelector:
                    matchLabels: {app: rich}
          topologySpreadConstraints:
          - maxSkew: 1
            topologyKey: topology.kubernetes.io/zone
            whenUnsatisfiable: ScheduleAnyway
            labelSelector:
              matchExpressions:
              - {key: app, operator: Exists}
          initContainers:
          - name: init
            image: busybox
            command: [sh, -c, "echo init"]
          containers:
          - name: main
            image: busybox:1.36
            imagePullPolicy: IfNotPresent
            command: [sh, -c]
            args: ["echo $(MODE) && sleep 1"]
            workingDir: /work
            ports:
            - {name: http, containerPort: 8080, protocol: TCP}
            env:
            - {name: MODE, value: fast}
            - name: CFG
              valueFrom:
                configMapKeyRef: {name: settings, key: mode, optional: true}
            - name: POD
              valueFrom:
                fieldRef: {fieldPath: metadata.name}
            - name: PASS
              valueFrom:
                secretKeyRef: {name: creds, key: password}
            - name: MEM
              valueFrom:
                resourceFieldRef: {containerName: main, resource: limits.memory, divisor: 1Mi}
            envFrom:
            - prefix: CM_
              configMapRef: {name: settings}
            - secretRef: {name: creds, optional: true}
            resources:
              limits: {cpu: 500m, memory: 128Mi}
              requests: {cpu: 100m, memory: 64Mi}
            volumeMounts:
            - {name: cfg, mountPath: /etc/cfg, readOnly: true}
            - {name: scratch, mountPath: /scratch, subPath: run}
            - {name: token, mountPath: /var/run/secrets/tokens}
            livenessProbe:
              httpGet:
                path: /healthz
                port: http
                httpHeaders:
                - {name: X-Probe, value: "1"}
              initialDelaySeconds: 3
              periodSeconds: 10
              failureThreshold: 4
            readinessProbe:
              exec:
                command: [cat, /tmp/ready]
              timeoutSeconds: 2
            startupProbe:
              tcpSocket:
                port: 8080
            lifecycle:
              preStop:
                exec:
                  command: [sh, -c, "sleep 1"]
            securityContext:
              allowPrivilegeEscalation: false
              readOnlyRootFilesystem: true
              capabilities:
                add: [NET_BIND_SERVICE]
                drop: [ALL]
            terminationMessagePolicy: FallbackToLogsOnError
          volumes:
          - name: cfg
            configMap:
              name: settings
              defaultMode: 420
              items:
              - {key: mode, path: mode.txt, mode: 256}
          - name: creds
            secret: {secretName: creds, optional: true}
          - name: scratch
            emptyDir: {medium: Memory, sizeLimit: 64Mi}
          - name: token
            projected:
              defaultMode: 288
              sources:
              - serviceAccountToken: {audience: api://AzureADTokenExchange, expirationSeconds: 3600, path: azure-identity-token}
              - configMap:
                  name: settings
                  items:
                  - {key: mode, path: mode}
              - downwardAPI:
                  items:
                  - path: labels
                    fieldRef: {fieldPath: metadata.labels}
          - name: host
            hostPath: {path: /var/log, type: Directory}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rich_pod_template_survives_kubectl_create_job_from_cronjob() {
    let env = Env::start().await;
    let file = env.dir.join("rich.yaml");
    std::fs::write(&file, RICH_CRONJOB).unwrap();
    env.ok(&["apply", "-f", file.to_str().unwrap()]).await;
    let cj = env.json(&["get", "cronjob", "rich"]).await;
    env.create_in_protobuf(&["create", "job", "rich-now", "--from=cronjob/rich"])
        .await;
    let job = env.json(&["get", "job", "rich-now"]).await;
    let want = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let got = &job["spec"]["template"]["spec"];
    assert!(
        want.pointer("/containers/0/livenessProbe/httpGet/httpHeaders/0/name")
            .is_some(),
        "the CronJob kept its template: {cj}"
    );
    let mut changed = Vec::new();
    differences(want, got, String::new(), &mut changed);
    assert!(
        changed.is_empty(),
        "pod spec changed on the way through protobuf:\n{}",
        changed.join("\n")
    );
    let annotations = &job["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["note"], "a b", "{job}");
    for field in [
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        assert_eq!(
            job["spec"][field], cj["spec"]["jobTemplate"]["spec"][field],
            "{field}"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rich_pod_survives_kubectl_debug_copy_to() {
    let env = Env::start().await;
    // The CronJob's pod template, applied as a Pod.
    let template = RICH_CRONJOB
        .split("      template:\n")
        .nth(1)
        .expect("the template");
    let pod: String = template
        .lines()
        .map(|l| l.strip_prefix("        ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replacen("metadata:\n", "metadata:\n  name: rich-pod\n", 1);
    let file = env.dir.join("pod.yaml");
    std::fs::write(&file, format!("apiVersion: v1\nkind: Pod\n{pod}")).unwrap();
    env.ok(&["apply", "-f", file.to_str().unwrap()]).await;
    let original = env.json(&["get", "pod", "rich-pod"]).await;
    assert!(
        original
            .pointer("/spec/containers/0/livenessProbe/httpGet")
            .is_some()
            && original["spec"]["volumes"].as_array().map(Vec::len) == Some(5)
            && original["spec"]["initContainers"].is_array(),
        "the applied pod is the rich one: {original}"
    );
    // kubectl reads the Pod, copies it and posts the copy (typed client: protobuf).
    env.create_in_protobuf(&[
        "debug",
        "rich-pod",
        "--copy-to=rich-copy",
        "--attach=false",
        "--keep-liveness",
        "--keep-readiness",
        "--keep-startup",
        "--keep-init-containers",
        "--set-image=main=busybox:1.37",
    ])
    .await;
    let copy = env.json(&["get", "pod", "rich-copy"]).await;
    let mut want = original["spec"].clone();
    let mut got = copy["spec"].clone();
    assert_eq!(got["containers"][0]["image"], "busybox:1.37");
    want["containers"][0]["image"] = Value::Null;
    got["containers"][0]["image"] = Value::Null;
    // The scheduler places each pod on a node of its own choosing.
    want["nodeName"] = Value::Null;
    got["nodeName"] = Value::Null;
    let mut changed = Vec::new();
    differences(&want, &got, String::new(), &mut changed);
    assert!(
        changed.is_empty(),
        "pod spec changed on the way through protobuf:\n{}",
        changed.join("\n")
    );
    env.stop().await;
}

/// The JSON pointers where `a` and `b` differ, with both values (an absent field and an
/// empty object count as equal).
fn differences(a: &Value, b: &Value, at: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(l, r, format!("{at}/{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                differences(l, r, format!("{at}/{i}"), out);
            }
        }
        // Go writes value structs even when empty (`resources: {}`); the simulator stores
        // the applied JSON as sent, without them. Both mean the same.
        (Value::Null, Value::Object(o)) | (Value::Object(o), Value::Null) if o.is_empty() => {}
        _ if a != b => out.push(format!("{at}: {a} != {b}")),
        _ => {}
    }
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = u8::try_from(v & 0x7f).unwrap();
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((n << 3) | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let tm = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
    [b"k8s\0".to_vec(), field(1, &tm), field(2, raw)].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undescribed_kinds_get_415_and_corrupt_bodies_400_storing_nothing() {
    let env = Env::start().await;
    let http = reqwest::Client::new();
    let base = env.sim.base_url();
    // Posts a protobuf body; the answer's status code and its JSON body (a Status or the object).
    let post = |path: &str, body: Vec<u8>| {
        let req = http
            .post(format!("{base}{path}"))
            .header("content-type", PROTOBUF)
            .header("accept", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let code = resp.status().as_u16();
            let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            (code, body)
        }
    };

    // Custom resources have no protobuf form; a real API server answers 415 too.
    let crd = env.dir.join("crd.yaml");
    std::fs::write(&crd, WIDGET_CRD).unwrap();
    env.ok(&["apply", "-f", crd.to_str().unwrap()]).await;
    let widget = envelope("example.com/v1", "Widget", &field(1, &field(1, b"w")));
    let (code, status) = post("/apis/example.com/v1/namespaces/default/widgets", widget).await;
    assert_eq!(code, 415, "{status}");
    let msg = status["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("no protobuf description of example.com/v1/Widget")
            && msg.contains("send JSON"),
        "{status}"
    );
    let widgets = env.json(&["get", "widgets"]).await;
    assert_eq!(
        widgets["items"],
        serde_json::json!([]),
        "nothing stored: {widgets}"
    );

    // A Node, answered 415 before it was described, is stored as a kubelet registers it.
    let node = envelope(
        "v1",
        "Node",
        &[
            field(1, &field(1, b"n-extra")),
            field(2, &field(3, b"azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/n-extra")),
            field(
                3,
                &[
                    field(1, &[field(1, b"pods"), field(2, &field(1, b"110"))].concat()),
                    field(5, &[field(1, b"InternalIP"), field(2, b"127.9.0.1")].concat()),
                ]
                .concat(),
            ),
        ]
        .concat(),
    );
    let (code, created) = post("/api/v1/nodes", node).await;
    assert_eq!(code, 201, "{created}");
    let n = env.json(&["get", "node", "n-extra"]).await;
    assert_eq!(
        n["spec"]["providerID"],
        "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/n-extra"
    );
    assert_eq!(n["status"]["capacity"]["pods"], "110", "{n}");
    assert_eq!(n["status"]["addresses"][0]["address"], "127.9.0.1", "{n}");

    // A ConfigMap named "half" whose data map entry is cut short.
    let mut corrupt = envelope(
        "v1",
        "ConfigMap",
        &[field(1, &field(1, b"half")), field(2, &field(1, b"key"))].concat(),
    );
    corrupt.truncate(corrupt.len() - 2);
    let (code, status) = post("/api/v1/namespaces/default/configmaps", corrupt).await;
    assert_eq!(code, 400);
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("invalid protobuf body: truncated")),
        "{status}"
    );
    // A mistyped field: metadata sent as a number.
    let mistyped = envelope("v1", "ConfigMap", &[0x08, 0x01]);
    let (code, status) = post("/api/v1/namespaces/default/configmaps", mistyped).await;
    assert_eq!(code, 400);
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("ConfigMap.metadata cannot be varint")),
        "{status}"
    );
    let cms = env.json(&["get", "configmaps"]).await;
    assert_eq!(cms["items"], serde_json::json!([]), "nothing stored: {cms}");

    // The same path takes a well-formed protobuf ConfigMap.
    let ok = envelope(
        "v1",
        "ConfigMap",
        &[
            field(1, &field(1, b"whole")),
            field(2, &[field(1, b"key"), field(2, b"value")].concat()),
        ]
        .concat(),
    );
    let (code, created) = post("/api/v1/namespaces/default/configmaps", ok).await;
    assert_eq!(code, 201, "{created}");
    let cm = env.json(&["get", "configmap", "whole"]).await;
    assert_eq!(cm["data"]["key"], "value");

    // `kubectl run` sends JSON, so a Pod in protobuf is posted here; the kubelet runs it.
    let app = [
        field(1, b"app"),
        field(2, b"nginx"),
        field(6, &[0x18, 0x90, 0x3f]), // ports: containerPort 8080
    ]
    .concat();
    let pod = envelope(
        "v1",
        "Pod",
        &[
            field(
                1,
                &[
                    field(1, b"solo"),
                    field(11, &[field(1, b"app"), field(2, b"solo")].concat()),
                ]
                .concat(),
            ),
            field(2, &[field(2, &app), field(3, b"Always")].concat()),
        ]
        .concat(),
    );
    let (code, created) = post("/api/v1/namespaces/default/pods", pod).await;
    assert_eq!(code, 201, "{created}");
    env.ok(&["wait", "--for=condition=Ready", "pod/solo", "--timeout=60s"])
        .await;
    let p = env.json(&["get", "pod", "solo"]).await;
    assert_eq!(p["metadata"]["labels"]["app"], "solo");
    let c = container(&p, "/spec/containers");
    assert_eq!(
        (c["image"].as_str(), c["ports"][0]["containerPort"].as_i64()),
        (Some("nginx"), Some(8080)),
        "{p}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_without_eviction_deletes_pods_with_protobuf_delete_options() {
    let env = Env::start().await;
    let nodes = env.ok(&["get", "nodes", "-o", "name"]).await;
    let node = nodes
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("node/"))
        .expect("a node")
        .to_string();
    let pin = format!(r#"{{"spec":{{"nodeName":"{node}"}}}}"#);
    env.ok(&["run", "p1", "--image=nginx", "--overrides", &pin])
        .await;
    env.ok(&["wait", "--for=condition=Ready", "pod/p1", "--timeout=60s"])
        .await;
    // The DELETE carries its DeleteOptions in protobuf, so this is about the protobuf path.
    env.sends_protobuf(
        "DELETE",
        &[
            "drain",
            &node,
            "--force",
            "--disable-eviction",
            "--grace-period=5",
            "--timeout=60s",
        ],
    )
    .await;
    let pods = env.json(&["get", "pods"]).await;
    assert_eq!(
        pods["items"],
        serde_json::json!([]),
        "the pod is gone: {pods}"
    );
    let n = env.json(&["get", "node", &node]).await;
    assert_eq!(n["spec"]["unschedulable"], true, "{n}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_schedules_kubernetes_refuses_are_refused_and_time_zones_are_kept() {
    let env = Env::start().await;
    for (schedule, why) in [
        (
            "CRON_TZ=UTC 0 3 * * *",
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ),
        ("0 12 * * 7", "end of range (7) above maximum (6): 7"),
        ("0 0 L * *", "failed to parse int from L"),
    ] {
        let sched = format!("--schedule={schedule}");
        let err = env
            .fails(&["create", "cronjob", "bad", "--image=busybox", &sched])
            .await;
        assert!(
            err.contains("is invalid") && err.contains(why),
            "{schedule}: {err}"
        );
    }
    let cronjobs = env.json(&["get", "cronjobs"]).await;
    assert_eq!(cronjobs["items"], serde_json::json!([]), "{cronjobs}");

    let file = env.dir.join("tz.yaml");
    std::fs::write(
        &file,
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tokyo}\nspec:\n  schedule: '0 3 * * *'\n  timeZone: Asia/Tokyo\n  jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}}}}\n",
    )
    .unwrap();
    env.ok(&["apply", "-f", file.to_str().unwrap()]).await;
    let tokyo = env.json(&["get", "cronjob", "tokyo"]).await;
    assert_eq!(tokyo["spec"]["timeZone"], "Asia/Tokyo", "{tokyo}");
    let err = env
        .fails(&[
            "patch",
            "cronjob",
            "tokyo",
            "--type=merge",
            "-p",
            r#"{"spec":{"timeZone":"Asia/Tokio"}}"#,
        ])
        .await;
    assert!(err.contains("unknown time zone Asia/Tokio"), "{err}");
    env.stop().await;
}
