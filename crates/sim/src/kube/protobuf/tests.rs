//! Bodies encoded by hand (a tiny encoder below), decoded and compared with the JSON the Go
//! types would produce; and property tests that the decoder never panics or hangs.

use super::schema::{self, Field, Kind, Message};
use super::*;
use proptest::prelude::*;

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = u8::try_from(v & 0x7f).unwrap();
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A varint field.
fn v(n: u64, x: u64) -> Vec<u8> {
    [varint(n << 3), varint(x)].concat()
}

/// A length-delimited field.
fn b(n: u64, bytes: &[u8]) -> Vec<u8> {
    [
        varint((n << 3) | 2),
        varint(bytes.len() as u64),
        bytes.to_vec(),
    ]
    .concat()
}

/// A string field.
fn s(n: u64, text: &str) -> Vec<u8> {
    b(n, text.as_bytes())
}

/// A message field made of `parts`.
fn m(n: u64, parts: &[Vec<u8>]) -> Vec<u8> {
    b(n, &parts.concat())
}

/// A map entry field.
fn e(n: u64, k: &str, val: &str) -> Vec<u8> {
    m(n, &[s(1, k), s(2, val)])
}

/// Negative int32 values travel sign-extended to 64 bits.
fn neg(x: i64) -> u64 {
    u64::from_ne_bytes(x.to_ne_bytes())
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let tm = [s(1, api_version), s(2, kind)].concat();
    [MAGIC.to_vec(), b(1, &tm), b(2, raw)].concat()
}

/// ObjectMeta as Go's generated code writes it: every value field, empty or not.
fn meta(name: &str, extra: &[Vec<u8>]) -> Vec<u8> {
    let mut parts = vec![
        s(1, name),
        s(2, ""),
        s(3, ""),
        s(4, ""),
        s(5, ""),
        s(6, ""),
        v(7, 0),
        b(8, &[]),
    ];
    parts.extend_from_slice(extra);
    m(1, &parts)
}

#[test]
fn a_secret_decodes_with_base64_data_and_labels() {
    let raw = [
        meta("sp-secret", &[e(11, "app", "nmi")]),
        e(2, "clientSecret", "s3cr3t"),
        s(3, "Opaque"),
    ]
    .concat();
    let got = decode(&envelope("v1", "Secret", &raw)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "sp-secret", "labels": {"app": "nmi"}, "creationTimestamp": null},
            "data": {"clientSecret": "czNjcjN0"},
            "type": "Opaque",
        })
    );
}

#[test]
fn a_deployment_decodes_like_kubectl_create_deployment_sends_it() {
    let container = [
        s(1, "nginx"),
        s(2, "nginx"),
        s(5, ""),
        m(8, &[]),
        s(13, ""),
        s(14, ""),
        v(16, 0),
        v(17, 0),
        v(18, 0),
        s(20, ""),
    ];
    let pod_spec = [m(2, &container), s(3, ""), s(6, ""), s(10, ""), v(11, 0)];
    let template = [meta("", &[e(11, "app", "web")]), m(2, &pod_spec)];
    let spec = [
        v(1, 2),
        m(2, &[e(1, "app", "web")]),
        m(3, &template),
        m(4, &[s(1, "")]),
        v(5, 0),
        v(7, 0),
    ];
    let raw = [
        meta("web", &[e(11, "app", "web")]),
        m(2, &spec),
        m(3, &[v(1, 0), v(2, 0)]),
    ]
    .concat();
    let got = decode(&envelope("apps/v1", "Deployment", &raw)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "creationTimestamp": null},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]},
                },
                "strategy": {},
            },
            "status": {},
        })
    );
}

#[test]
fn pointer_fields_keep_their_zero_values_and_value_fields_drop_them() {
    let spec = [v(1, 0), v(5, 0), v(6, 0), v(7, 0), v(9, 0)];
    let got = decode(&envelope("apps/v1", "Deployment", &m(2, &spec))).unwrap();
    assert_eq!(
        got["spec"],
        json!({"replicas": 0, "revisionHistoryLimit": 0, "progressDeadlineSeconds": 0})
    );
    // A later occurrence of a field wins, a later zero included.
    let spec = [v(5, 7), v(5, 0), v(1, 3), v(1, 4)];
    let got = decode(&envelope("apps/v1", "Deployment", &m(2, &spec))).unwrap();
    assert_eq!(got["spec"], json!({"replicas": 4}));
}

#[test]
fn a_job_keeps_its_command_policy_and_limits() {
    let container = [
        s(1, "j"),
        s(2, "busybox"),
        s(3, "sh"),
        s(3, "-c"),
        s(3, "echo hi"),
        m(
            7,
            &[
                s(1, "MODE"),
                m(3, &[m(3, &[m(1, &[s(1, "cfg")]), s(2, "mode")])]),
            ],
        ),
        m(
            10,
            &[
                m(
                    1,
                    &[m(2, &[s(1, "/healthz"), m(2, &[v(1, 1), s(3, "http")])])],
                ),
                v(4, 5),
            ],
        ),
    ];
    let pod_spec = [
        m(2, &container),
        s(3, "Never"),
        v(4, neg(-1)),
        m(
            22,
            &[s(1, "k"), s(2, "Exists"), s(4, "NoExecute"), v(5, 300)],
        ),
    ];
    let spec = [
        v(1, 1),
        v(2, 3),
        v(3, 600),
        v(7, 4),
        m(4, &[m(2, &[s(1, "k"), s(2, "In"), s(3, "a"), s(3, "b")])]),
        v(5, 1),
        m(6, &[m(2, &pod_spec)]),
        v(8, 100),
        s(9, "NonIndexed"),
        v(10, 0),
    ];
    let got = decode(&envelope("batch/v1", "Job", &m(2, &spec))).unwrap();
    assert_eq!(
        got["spec"],
        json!({
            "parallelism": 1, "completions": 3, "activeDeadlineSeconds": 600, "backoffLimit": 4,
            "selector": {"matchExpressions": [{"key": "k", "operator": "In", "values": ["a", "b"]}]},
            "manualSelector": true,
            "template": {"spec": {
                "containers": [{
                    "name": "j", "image": "busybox", "command": ["sh", "-c", "echo hi"],
                    "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}}],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                }],
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": -1,
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            }},
            "ttlSecondsAfterFinished": 100, "completionMode": "NonIndexed", "suspend": false,
        })
    );
}

#[test]
fn a_cronjob_decodes_in_both_batch_versions() {
    let job_spec = [m(
        6,
        &[m(2, &[m(2, &[s(1, "c"), s(2, "busybox"), s(3, "true")])])],
    )];
    let spec = [
        s(1, "*/1 * * * *"),
        s(8, "Etc/UTC"),
        v(2, 30),
        s(3, "Forbid"),
        v(4, 0),
        m(5, &[meta("", &[]), m(2, &job_spec)]),
        v(6, 3),
        v(7, 1),
    ];
    for av in ["batch/v1", "batch/v1beta1"] {
        let got = decode(&envelope(av, "CronJob", &m(2, &spec))).unwrap();
        assert_eq!(got["apiVersion"], av);
        assert_eq!(
            got["spec"],
            json!({
                "schedule": "*/1 * * * *", "timeZone": "Etc/UTC", "startingDeadlineSeconds": 30,
                "concurrencyPolicy": "Forbid", "suspend": false,
                "jobTemplate": {
                    "metadata": {"creationTimestamp": null},
                    "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}},
                },
                "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1,
            })
        );
    }
}

#[test]
fn owner_references_times_and_volumes_decode() {
    let owner = m(
        13,
        &[
            s(5, "batch/v1"),
            s(1, "CronJob"),
            s(3, "c"),
            s(4, "uid-1"),
            v(6, 1),
            v(7, 1),
        ],
    );
    let md = meta(
        "j2",
        &[
            owner,
            e(12, "cronjob.kubernetes.io/instantiate", "manual"),
            m(9, &[v(1, 1_700_000_000), v(2, 5)]),
            s(14, "foregroundDeletion"),
        ],
    );
    let volumes = [
        m(
            1,
            &[
                s(1, "cfg"),
                m(2, &[m(19, &[m(1, &[s(1, "settings")]), v(3, 420)])]),
            ],
        ),
        m(
            1,
            &[
                s(1, "token"),
                m(
                    2,
                    &[m(
                        26,
                        &[m(
                            1,
                            &[m(
                                4,
                                &[s(1, "api://AzureADTokenExchange"), v(2, 3600), s(3, "t")],
                            )],
                        )],
                    )],
                ),
            ],
        ),
        m(
            1,
            &[s(1, "scratch"), m(2, &[m(2, &[m(2, &[s(1, "1Gi")])])])],
        ),
        m(
            1,
            &[
                s(1, "host"),
                m(2, &[m(1, &[s(1, "/var/run"), s(2, "Directory")])]),
            ],
        ),
    ];
    let container = [
        s(1, "app"),
        m(
            8,
            &[
                e(1, "cpu", ""),
                m(2, &[s(1, "memory"), m(2, &[s(1, "64Mi")])]),
            ],
        ),
        m(9, &[s(1, "cfg"), v(2, 1), s(3, "/etc/cfg")]),
        m(15, &[m(1, &[s(2, "ALL")]), v(5, 1), v(4, 1000)]),
        m(6, &[s(1, "http"), v(3, 8080), s(4, "TCP")]),
    ];
    let raw = [md, m(2, &[m(2, &container), volumes.concat()])].concat();
    let got = decode(&envelope("v1", "Pod", &raw)).unwrap();
    assert_eq!(
        got["metadata"],
        json!({
            "name": "j2", "creationTimestamp": null,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "c", "uid": "uid-1",
                                 "controller": true, "blockOwnerDeletion": true}],
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "deletionTimestamp": "2023-11-14T22:13:20Z",
            "finalizers": ["foregroundDeletion"],
        })
    );
    assert_eq!(
        got["spec"]["containers"][0],
        json!({
            "name": "app",
            // A Quantity entry without a value is the zero quantity.
            "resources": {"limits": {"cpu": "0"}, "requests": {"memory": "64Mi"}},
            "volumeMounts": [{"name": "cfg", "readOnly": true, "mountPath": "/etc/cfg"}],
            "securityContext": {"capabilities": {"drop": ["ALL"]}, "runAsNonRoot": true, "runAsUser": 1000},
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        })
    );
    assert_eq!(
        got["spec"]["volumes"],
        json!([
            {"name": "cfg", "configMap": {"name": "settings", "defaultMode": 420}},
            {"name": "token", "projected": {"sources": [{"serviceAccountToken":
                {"audience": "api://AzureADTokenExchange", "expirationSeconds": 3600, "path": "t"}}]}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "host", "hostPath": {"path": "/var/run", "type": "Directory"}},
        ])
    );
}

#[test]
fn services_leases_and_events_decode_their_special_types() {
    let port = m(
        1,
        &[
            s(1, "web"),
            s(2, "TCP"),
            v(3, 80),
            m(4, &[v(1, 0), v(2, 8080), s(3, "")]),
        ],
    );
    let named = m(1, &[v(3, 443), m(4, &[v(1, 1), v(2, 0), s(3, "https")])]);
    let raw = [m(2, &[port, named, e(2, "app", "web"), s(4, "ClusterIP")])].concat();
    let got = decode(&envelope("v1", "Service", &raw)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"ports": [{"name": "web", "protocol": "TCP", "port": 80, "targetPort": 8080},
                         {"port": 443, "targetPort": "https"}],
               "selector": {"app": "web"}, "type": "ClusterIP"})
    );
    let spec = [
        s(1, "mic-0"),
        v(2, 15),
        m(4, &[v(1, 1_700_000_000), v(2, 123_456_789)]),
        v(5, 0),
    ];
    let got = decode(&envelope("coordination.k8s.io/v1", "Lease", &m(2, &spec))).unwrap();
    assert_eq!(
        got["spec"],
        json!({"holderIdentity": "mic-0", "leaseDurationSeconds": 15,
               "renewTime": "2023-11-14T22:13:20.123456Z", "leaseTransitions": 0})
    );
    let raw = [
        m(2, &[s(1, "Pod"), s(3, "demo")]),
        s(3, "Assigned"),
        m(6, &[v(1, 0)]),
        v(8, 2),
        b(10, &[]),
    ]
    .concat();
    let got = decode(&envelope("v1", "Event", &raw)).unwrap();
    assert_eq!(
        got["involvedObject"],
        json!({"kind": "Pod", "name": "demo"})
    );
    assert_eq!(got["firstTimestamp"], "1970-01-01T00:00:00Z");
    assert_eq!(got["eventTime"], Value::Null, "the zero MicroTime");
    assert_eq!(got["count"], 2);
}

/// Descriptors for the kinds no described field uses yet.
static EXTRAS: Message = Message {
    name: "Extras",
    fields: &[
        Field {
            num: 1,
            name: "blob",
            kind: Kind::Bytes,
            repeated: false,
        },
        Field {
            num: 2,
            name: "raw",
            kind: Kind::RawExtension,
            repeated: false,
        },
        Field {
            num: 3,
            name: "every",
            kind: Kind::Duration,
            repeated: true,
        },
        Field {
            num: 4,
            name: "codes",
            kind: Kind::I32,
            repeated: true,
        },
    ],
};

#[test]
fn bytes_raw_extensions_durations_and_packed_varints_decode() {
    let d = |nanos: i64| m(3, &[v(1, neg(nanos))]);
    let packed = [varint(1), varint(neg(-2)), varint(300)].concat();
    let buf = [
        b(1, &[0xff, 0x00]),
        m(2, &[b(1, br#"{"a":[1,true]}"#)]),
        d(0),
        d(1_500),
        d(2_000_000),
        d(90_000_000_000),
        d(3_600_000_000_000),
        d(-1_500_000_000),
        b(4, &packed),
        v(4, 7),
    ]
    .concat();
    let mut out = Map::new();
    message(&EXTRAS, &buf, 0, &mut out).unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"blob": "/wA=", "raw": {"a": [1, true]},
               "every": ["0s", "1.5µs", "2ms", "1m30s", "1h0m0s", "-1.5s"],
               "codes": [1, -2, 300, 7]})
    );
    let mut out = Map::new();
    let e = message(&EXTRAS, &m(2, &[b(1, b"{nope")]), 0, &mut out).unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.message.contains("RawExtension"), "{}", e.message);
}

#[test]
fn undescribed_kinds_get_415_and_garbage_gets_a_precise_400() {
    let e = decode(&envelope("v1", "Node", &[])).unwrap_err();
    assert_eq!(e.code, 415);
    assert!(
        e.message.contains("no protobuf description of v1/Node") && e.message.contains("send JSON"),
        "{}",
        e.message
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not protobuf".to_vec(), "missing the k8s envelope"),
        (b"k8s\0\x0a\xff".to_vec(), "truncated"),
        (
            envelope("v1", "ConfigMap", &m(1, &[v(1, 5)])),
            "ObjectMeta.name cannot be varint",
        ),
        (
            envelope("v1", "ConfigMap", &v(1, 3)),
            "ConfigMap.metadata cannot be varint",
        ),
        (
            envelope("v1", "ConfigMap", &[0x0b]),
            "unsupported wire type 3",
        ),
        (envelope("v1", "ConfigMap", &[0x00]), "field number 0"),
        (
            envelope(
                "v1",
                "ConfigMap",
                &meta("", &[m(8, &[v(1, neg(-70_000_000_000))])]),
            ),
            "out of range",
        ),
        (
            envelope("v1", "Service", &m(2, &[m(1, &[m(4, &[v(1, 2)])])])),
            "IntOrString has type 2",
        ),
        (envelope("v1", "Secret", &b(3, &[0xc3, 0x28])), "not UTF-8"),
    ];
    for (body, why) in cases {
        let e = decode(&body).unwrap_err();
        assert_eq!(e.code, 400, "{why}: {}", e.message);
        assert!(
            e.message.contains(why),
            "expected {why:?} in {:?}",
            e.message
        );
    }
    let mut trunc = envelope("v1", "Namespace", &m(1, &[s(1, "ns")]));
    trunc.truncate(trunc.len() - 1);
    assert_eq!(decode(&trunc).unwrap_err().code, 400);
}

#[test]
fn nesting_is_bounded() {
    // A descriptor that contains itself, so only the depth limit stops the recursion.
    static LOOP: Message = Message {
        name: "Loop",
        fields: &[Field {
            num: 1,
            name: "next",
            kind: Kind::Msg(&LOOP),
            repeated: false,
        }],
    };
    let mut buf = Vec::new();
    for _ in 0..MAX_DEPTH {
        buf = b(1, &buf);
    }
    message(&LOOP, &buf, 0, &mut Map::new()).unwrap();
    let deeper = b(1, &b(1, &buf));
    let e = message(&LOOP, &deeper, 0, &mut Map::new()).unwrap_err();
    assert!(e.message.contains("nested deeper"), "{}", e.message);
}

#[test]
fn an_envelope_may_carry_json() {
    let mut body = [MAGIC.to_vec(), m(1, &[s(1, "v1"), s(2, "ConfigMap")])].concat();
    body.extend(b(2, br#"{"data":{"a":"b"}}"#));
    body.extend(s(4, "application/json"));
    let got = decode(&body).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}})
    );
    let mut gz = envelope("v1", "ConfigMap", &[]);
    gz.extend(s(3, "gzip"));
    assert_eq!(decode(&gz).unwrap_err().code, 415);
}

/// A valid Deployment to mutate.
fn sample_deployment() -> Vec<u8> {
    let container = [
        s(1, "nginx"),
        s(2, "nginx"),
        m(8, &[m(1, &[s(1, "cpu"), m(2, &[s(1, "100m")])])]),
        m(11, &[m(1, &[m(3, &[m(1, &[v(1, 0), v(2, 80)])])])]),
    ];
    let template = [meta("", &[e(11, "app", "web")]), m(2, &[m(2, &container)])];
    let spec = [
        v(1, 2),
        m(2, &[e(1, "app", "web")]),
        m(3, &template),
        m(
            4,
            &[
                s(1, "RollingUpdate"),
                m(
                    2,
                    &[m(1, &[v(1, 0), v(2, 1)]), m(2, &[v(1, 1), s(3, "25%")])],
                ),
            ],
        ),
    ];
    envelope(
        "apps/v1",
        "Deployment",
        &[meta("web", &[]), m(2, &spec)].concat(),
    )
}

/// Random protobuf-shaped bytes: fields with small numbers (so they hit described fields,
/// often with the wrong wire type) and nested messages.
fn proto_tree() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        (1u64..40, any::<u64>()).prop_map(|(n, x)| v(n, x)),
        (1u64..40, proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(n, x)| b(n, &x)),
        (1u64..40, "[a-z0-9%:/]{0,8}").prop_map(|(n, x)| s(n, &x)),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        (1u64..40, proptest::collection::vec(inner, 0..6)).prop_map(|(n, parts)| m(n, &parts))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&body);
        let _ = decode(&[MAGIC, &body].concat());
        for (_, _, msg) in schema::KINDS {
            let _ = message(msg, &body, 0, &mut Map::new());
        }
    }

    #[test]
    fn random_trees_never_panic(parts in proptest::collection::vec(proto_tree(), 0..8)) {
        let raw = parts.concat();
        for (av, kind, msg) in schema::KINDS {
            let _ = message(msg, &raw, 0, &mut Map::new());
            let _ = decode(&envelope(av, kind, &raw));
        }
    }

    #[test]
    fn mutated_deployments_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8)
    ) {
        let mut body = sample_deployment();
        for (at, byte, op) in edits {
            let i = at % (body.len() + 1);
            match op {
                0 if i < body.len() => body[i] = byte,
                1 => body.insert(i, byte),
                _ => body.truncate(i.max(MAGIC.len())),
            }
        }
        if let Ok(got) = decode(&body) {
            prop_assert!(got.is_object());
        }
    }
}

#[test]
fn the_sample_deployment_is_valid() {
    let got = decode(&sample_deployment()).unwrap();
    assert_eq!(
        got["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}})
    );
    assert_eq!(
        got["spec"]["template"]["spec"]["containers"][0]["readinessProbe"],
        json!({"tcpSocket": {"port": 80}})
    );
}

#[test]
fn newer_pod_fields_decode() {
    let app_armor = m(12, &[s(1, "RuntimeDefault")]);
    let spec = [
        m(2, &[s(1, "c"), m(15, &[app_armor])]),
        m(
            14,
            &[m(11, &[s(1, "Localhost"), s(2, "p")]), s(12, "Strict")],
        ),
        m(36, &[s(1, "linux")]),
        v(37, 0),
        m(38, &[s(1, "example.com/gate")]),
        m(40, &[m(1, &[s(1, "cpu"), m(2, &[s(1, "2")])])]),
    ];
    let got = decode(&envelope("v1", "Pod", &m(2, &spec))).unwrap();
    assert_eq!(
        got["spec"],
        json!({
            "containers": [{"name": "c", "securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}],
            "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"},
                                "supplementalGroupsPolicy": "Strict"},
            "os": {"name": "linux"},
            "hostUsers": false,
            "schedulingGates": [{"name": "example.com/gate"}],
            "resources": {"limits": {"cpu": "2"}},
        })
    );
}

#[test]
fn daemonsets_and_replicasets_decode() {
    let template = m(2, &[m(2, &[m(2, &[s(1, "nmi"), s(2, "nmi:1")]), v(11, 1)])]);
    let rolling = m(
        2,
        &[m(1, &[v(1, 1), s(3, "10%")]), m(2, &[v(1, 0), v(2, 0)])],
    );
    let spec = [
        m(1, &[e(1, "app", "nmi")]),
        template.clone(),
        m(3, &[s(1, "RollingUpdate"), rolling]),
        v(4, 5),
        v(6, 3),
    ];
    let got = decode(&envelope("apps/v1", "DaemonSet", &m(2, &spec))).unwrap();
    assert_eq!(
        got["spec"],
        json!({
            "selector": {"matchLabels": {"app": "nmi"}},
            "template": {"spec": {"containers": [{"name": "nmi", "image": "nmi:1"}], "hostNetwork": true}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0}},
            "minReadySeconds": 5,
            "revisionHistoryLimit": 3,
        })
    );
    let spec = [
        v(1, 3),
        m(2, &[e(1, "app", "web")]),
        m(3, &[m(2, &[m(2, &[s(1, "c")])])]),
    ];
    let got = decode(&envelope("apps/v1", "ReplicaSet", &m(2, &spec))).unwrap();
    assert_eq!(got["spec"]["replicas"], 3);
    assert_eq!(
        got["spec"]["template"]["spec"]["containers"][0]["name"],
        "c"
    );
}
