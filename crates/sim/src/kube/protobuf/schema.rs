//! The message descriptors the protobuf decoder walks: for each Kubernetes message, its field
//! numbers, JSON names and value kinds, as declared in the `generated.proto` files of
//! `k8s.io/api` (core/v1, apps/v1, batch/v1) and `k8s.io/apimachinery` (meta/v1, intstr,
//! resource). Only what the served kinds need is described; a field missing here is skipped
//! by the decoder like any unknown field.
//!
//! Left out on purpose: `ObjectMeta.managedFields` (the server owns it), ephemeral containers,
//! volume sources for cloud and network storage other than NFS and CSI, `resourceClaims`,
//! container statuses in `PodStatus`, the status of Services, `PodSpec.workloadRef`,
//! container `ulimits` and `restartPolicyRules`, `LifecycleHandler.sleep` and
//! `Lifecycle.stopSignal`. CustomResourceDefinitions are not described (kubectl sends them as
//! JSON, and custom resources have no protobuf form on a real server either).
//!
//! No maintained crate can replace these rows: `k8s-pb` (kube-rs's prost types) decodes the
//! wire but carries neither JSON names nor field reflection, and neither it, Kubernetes'
//! `.proto` files nor `k8s-openapi` knows which scalars are Go pointers: `DeploymentSpec`'s
//! `replicas` (`*int32`) and `minReadySeconds` (`int32`, `omitempty`) are both `optional int32`
//! in the proto and both `Option<i32>` in k8s-openapi, yet a zero travels as `"replicas": 0`
//! and no `minReadySeconds` at all. The `Opt*` kinds below carry that knowledge, taken from the
//! Go types.

/// How a field's value is carried on the wire and rendered in JSON.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A Go value string with `omitempty`: the empty string is left out.
    Str,
    /// Kept even when empty: a Go `*string`, or a value string without `omitempty`.
    OptStr,
    /// A Go value bool: `false` is left out.
    Bool,
    /// A Go `*bool`: kept even when false.
    OptBool,
    /// A Go value int32: zero is left out.
    I32,
    /// Kept even when zero: a Go `*int32`, or a value int32 without `omitempty`.
    OptI32,
    /// A Go value int64: zero is left out.
    I64,
    /// A Go `*int64`: kept even when zero.
    OptI64,
    /// `[]byte`, base64 in JSON. (No described field is a plain `bytes` yet; tested with
    /// test-only descriptors so new kinds can use it.)
    #[cfg_attr(not(test), allow(dead_code))]
    Bytes,
    /// A nested message, rendered as an object.
    Msg(&'static Message),
    /// An embedded Go struct: its fields appear in the parent's JSON object.
    Inline(&'static Message),
    /// `metav1.Time` (`seconds` = 1, `nanos` = 2): an RFC 3339 string, whole seconds.
    Time,
    /// `metav1.MicroTime`: an RFC 3339 string with microseconds.
    MicroTime,
    /// `resource.Quantity` (`string` = 1): the quantity's string.
    Quantity,
    /// `intstr.IntOrString` (`type` = 1, `intVal` = 2, `strVal` = 3): a number or a string.
    IntOrString,
    /// `runtime.RawExtension` (`raw` = 1): the JSON it holds. (Unused by the described
    /// kinds, like `Duration`; both tested with test-only descriptors.)
    #[cfg_attr(not(test), allow(dead_code))]
    RawExtension,
    /// `metav1.Duration` (`duration` = 1, nanoseconds): Go's duration string.
    #[cfg_attr(not(test), allow(dead_code))]
    Duration,
    /// `map<string, string>`.
    MapStr,
    /// `map<string, bytes>`, values base64 in JSON.
    MapBytes,
    /// `map<string, Quantity>`.
    MapQuantity,
}

/// One field of a message.
#[derive(Debug)]
pub struct Field {
    /// Protobuf field number.
    pub num: u64,
    /// JSON field name.
    pub name: &'static str,
    /// Value kind.
    pub kind: Kind,
    /// `repeated`: a JSON array.
    pub repeated: bool,
}

/// A message: its name (for error messages) and fields.
#[derive(Debug)]
pub struct Message {
    /// The message's name in the `.proto` file.
    pub name: &'static str,
    /// Its described fields.
    pub fields: &'static [Field],
}

impl Message {
    /// The field with this number, if described.
    #[must_use]
    pub fn field(&self, num: u64) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.num == num)
    }
}

use Kind::{
    Bool, I32, I64, Inline, IntOrString, MapBytes, MapQuantity, MapStr, MicroTime, Msg, OptBool,
    OptI32, OptI64, OptStr, Quantity, Str, Time,
};

const fn f(num: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: false,
    }
}

const fn r(num: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        repeated: true,
    }
}

const fn m(name: &'static str, fields: &'static [Field]) -> Message {
    Message { name, fields }
}

// ---- k8s.io/apimachinery pkg/apis/meta/v1 ----

static OWNER_REFERENCE: Message = m(
    "OwnerReference",
    &[
        f(5, "apiVersion", Str),
        f(1, "kind", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
        f(6, "controller", OptBool),
        f(7, "blockOwnerDeletion", OptBool),
    ],
);

static OBJECT_META: Message = m(
    "ObjectMeta",
    &[
        f(1, "name", Str),
        f(2, "generateName", Str),
        f(3, "namespace", Str),
        f(4, "selfLink", Str),
        f(5, "uid", Str),
        f(6, "resourceVersion", Str),
        f(7, "generation", I64),
        f(8, "creationTimestamp", Time),
        f(9, "deletionTimestamp", Time),
        f(10, "deletionGracePeriodSeconds", OptI64),
        f(11, "labels", MapStr),
        f(12, "annotations", MapStr),
        r(13, "ownerReferences", Msg(&OWNER_REFERENCE)),
        r(14, "finalizers", Str),
    ],
);

static LABEL_SELECTOR_REQUIREMENT: Message = m(
    "LabelSelectorRequirement",
    &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)],
);

static LABEL_SELECTOR: Message = m(
    "LabelSelector",
    &[
        f(1, "matchLabels", MapStr),
        r(2, "matchExpressions", Msg(&LABEL_SELECTOR_REQUIREMENT)),
    ],
);

static PRECONDITIONS: Message = m(
    "Preconditions",
    &[f(1, "uid", OptStr), f(2, "resourceVersion", OptStr)],
);

/// The body of a DELETE (`kubectl drain --disable-eviction` sends it in protobuf).
static DELETE_OPTIONS: Message = m(
    "DeleteOptions",
    &[
        f(1, "gracePeriodSeconds", OptI64),
        f(2, "preconditions", Msg(&PRECONDITIONS)),
        f(3, "orphanDependents", OptBool),
        f(4, "propagationPolicy", OptStr),
        r(5, "dryRun", Str),
        f(
            6,
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            OptBool,
        ),
    ],
);

// ---- k8s.io/api core/v1: references and selectors ----

static LOCAL_OBJECT_REFERENCE: Message = m("LocalObjectReference", &[f(1, "name", Str)]);

static OBJECT_REFERENCE: Message = m(
    "ObjectReference",
    &[
        f(1, "kind", Str),
        f(2, "namespace", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
        f(5, "apiVersion", Str),
        f(6, "resourceVersion", Str),
        f(7, "fieldPath", Str),
    ],
);

static OBJECT_FIELD_SELECTOR: Message = m(
    "ObjectFieldSelector",
    &[f(1, "apiVersion", Str), f(2, "fieldPath", Str)],
);

static RESOURCE_FIELD_SELECTOR: Message = m(
    "ResourceFieldSelector",
    &[
        f(1, "containerName", Str),
        f(2, "resource", Str),
        f(3, "divisor", Quantity),
    ],
);

static CONFIG_MAP_KEY_SELECTOR: Message = m(
    "ConfigMapKeySelector",
    &[
        f(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        f(2, "key", Str),
        f(3, "optional", OptBool),
    ],
);

static SECRET_KEY_SELECTOR: Message = m(
    "SecretKeySelector",
    &[
        f(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        f(2, "key", Str),
        f(3, "optional", OptBool),
    ],
);

// ---- containers ----

static ENV_VAR_SOURCE: Message = m(
    "EnvVarSource",
    &[
        f(1, "fieldRef", Msg(&OBJECT_FIELD_SELECTOR)),
        f(2, "resourceFieldRef", Msg(&RESOURCE_FIELD_SELECTOR)),
        f(3, "configMapKeyRef", Msg(&CONFIG_MAP_KEY_SELECTOR)),
        f(4, "secretKeyRef", Msg(&SECRET_KEY_SELECTOR)),
    ],
);

static ENV_VAR: Message = m(
    "EnvVar",
    &[
        f(1, "name", Str),
        f(2, "value", Str),
        f(3, "valueFrom", Msg(&ENV_VAR_SOURCE)),
    ],
);

static CONFIG_MAP_ENV_SOURCE: Message = m(
    "ConfigMapEnvSource",
    &[
        f(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        f(2, "optional", OptBool),
    ],
);

static SECRET_ENV_SOURCE: Message = m(
    "SecretEnvSource",
    &[
        f(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        f(2, "optional", OptBool),
    ],
);

static ENV_FROM_SOURCE: Message = m(
    "EnvFromSource",
    &[
        f(1, "prefix", Str),
        f(2, "configMapRef", Msg(&CONFIG_MAP_ENV_SOURCE)),
        f(3, "secretRef", Msg(&SECRET_ENV_SOURCE)),
    ],
);

static CONTAINER_PORT: Message = m(
    "ContainerPort",
    &[
        f(1, "name", Str),
        f(2, "hostPort", I32),
        f(3, "containerPort", I32),
        f(4, "protocol", Str),
        f(5, "hostIP", Str),
    ],
);

static RESOURCE_REQUIREMENTS: Message = m(
    "ResourceRequirements",
    &[f(1, "limits", MapQuantity), f(2, "requests", MapQuantity)],
);

static CONTAINER_RESIZE_POLICY: Message = m(
    "ContainerResizePolicy",
    &[f(1, "resourceName", Str), f(2, "restartPolicy", Str)],
);

static VOLUME_MOUNT: Message = m(
    "VolumeMount",
    &[
        f(1, "name", Str),
        f(2, "readOnly", Bool),
        f(3, "mountPath", Str),
        f(4, "subPath", Str),
        f(5, "mountPropagation", OptStr),
        f(6, "subPathExpr", Str),
    ],
);

static VOLUME_DEVICE: Message = m(
    "VolumeDevice",
    &[f(1, "name", Str), f(2, "devicePath", Str)],
);

static EXEC_ACTION: Message = m("ExecAction", &[r(1, "command", Str)]);

static HTTP_HEADER: Message = m("HTTPHeader", &[f(1, "name", Str), f(2, "value", Str)]);

static HTTP_GET_ACTION: Message = m(
    "HTTPGetAction",
    &[
        f(1, "path", Str),
        f(2, "port", IntOrString),
        f(3, "host", Str),
        f(4, "scheme", Str),
        r(5, "httpHeaders", Msg(&HTTP_HEADER)),
    ],
);

static TCP_SOCKET_ACTION: Message = m(
    "TCPSocketAction",
    &[f(1, "port", IntOrString), f(2, "host", Str)],
);

static GRPC_ACTION: Message = m("GRPCAction", &[f(1, "port", I32), f(2, "service", OptStr)]);

static PROBE_HANDLER: Message = m(
    "ProbeHandler",
    &[
        f(1, "exec", Msg(&EXEC_ACTION)),
        f(2, "httpGet", Msg(&HTTP_GET_ACTION)),
        f(3, "tcpSocket", Msg(&TCP_SOCKET_ACTION)),
        f(4, "grpc", Msg(&GRPC_ACTION)),
    ],
);

static PROBE: Message = m(
    "Probe",
    &[
        f(1, "handler", Inline(&PROBE_HANDLER)),
        f(2, "initialDelaySeconds", I32),
        f(3, "timeoutSeconds", I32),
        f(4, "periodSeconds", I32),
        f(5, "successThreshold", I32),
        f(6, "failureThreshold", I32),
        f(7, "terminationGracePeriodSeconds", OptI64),
    ],
);

static LIFECYCLE_HANDLER: Message = m(
    "LifecycleHandler",
    &[
        f(1, "exec", Msg(&EXEC_ACTION)),
        f(2, "httpGet", Msg(&HTTP_GET_ACTION)),
        f(3, "tcpSocket", Msg(&TCP_SOCKET_ACTION)),
    ],
);

static LIFECYCLE: Message = m(
    "Lifecycle",
    &[
        f(1, "postStart", Msg(&LIFECYCLE_HANDLER)),
        f(2, "preStop", Msg(&LIFECYCLE_HANDLER)),
    ],
);

static CAPABILITIES: Message = m("Capabilities", &[r(1, "add", Str), r(2, "drop", Str)]);

static SE_LINUX_OPTIONS: Message = m(
    "SELinuxOptions",
    &[
        f(1, "user", Str),
        f(2, "role", Str),
        f(3, "type", Str),
        f(4, "level", Str),
    ],
);

static WINDOWS_SECURITY_CONTEXT_OPTIONS: Message = m(
    "WindowsSecurityContextOptions",
    &[
        f(1, "gmsaCredentialSpecName", OptStr),
        f(2, "gmsaCredentialSpec", OptStr),
        f(3, "runAsUserName", OptStr),
    ],
);

static SECCOMP_PROFILE: Message = m(
    "SeccompProfile",
    &[f(1, "type", Str), f(2, "localhostProfile", OptStr)],
);

static APP_ARMOR_PROFILE: Message = m(
    "AppArmorProfile",
    &[f(1, "type", Str), f(2, "localhostProfile", OptStr)],
);

static SECURITY_CONTEXT: Message = m(
    "SecurityContext",
    &[
        f(1, "capabilities", Msg(&CAPABILITIES)),
        f(2, "privileged", OptBool),
        f(3, "seLinuxOptions", Msg(&SE_LINUX_OPTIONS)),
        f(10, "windowsOptions", Msg(&WINDOWS_SECURITY_CONTEXT_OPTIONS)),
        f(4, "runAsUser", OptI64),
        f(8, "runAsGroup", OptI64),
        f(5, "runAsNonRoot", OptBool),
        f(6, "readOnlyRootFilesystem", OptBool),
        f(7, "allowPrivilegeEscalation", OptBool),
        f(9, "procMount", OptStr),
        f(11, "seccompProfile", Msg(&SECCOMP_PROFILE)),
        f(12, "appArmorProfile", Msg(&APP_ARMOR_PROFILE)),
    ],
);

static CONTAINER: Message = m(
    "Container",
    &[
        f(1, "name", Str),
        f(2, "image", Str),
        r(3, "command", Str),
        r(4, "args", Str),
        f(5, "workingDir", Str),
        r(6, "ports", Msg(&CONTAINER_PORT)),
        r(19, "envFrom", Msg(&ENV_FROM_SOURCE)),
        r(7, "env", Msg(&ENV_VAR)),
        f(8, "resources", Msg(&RESOURCE_REQUIREMENTS)),
        r(23, "resizePolicy", Msg(&CONTAINER_RESIZE_POLICY)),
        f(24, "restartPolicy", OptStr),
        r(9, "volumeMounts", Msg(&VOLUME_MOUNT)),
        r(21, "volumeDevices", Msg(&VOLUME_DEVICE)),
        f(10, "livenessProbe", Msg(&PROBE)),
        f(11, "readinessProbe", Msg(&PROBE)),
        f(22, "startupProbe", Msg(&PROBE)),
        f(12, "lifecycle", Msg(&LIFECYCLE)),
        f(13, "terminationMessagePath", Str),
        f(20, "terminationMessagePolicy", Str),
        f(14, "imagePullPolicy", Str),
        f(15, "securityContext", Msg(&SECURITY_CONTEXT)),
        f(16, "stdin", Bool),
        f(17, "stdinOnce", Bool),
        f(18, "tty", Bool),
    ],
);

// ---- volumes ----

static KEY_TO_PATH: Message = m(
    "KeyToPath",
    &[f(1, "key", Str), f(2, "path", Str), f(3, "mode", OptI32)],
);

static HOST_PATH_VOLUME_SOURCE: Message = m(
    "HostPathVolumeSource",
    &[f(1, "path", Str), f(2, "type", OptStr)],
);

static EMPTY_DIR_VOLUME_SOURCE: Message = m(
    "EmptyDirVolumeSource",
    &[f(1, "medium", Str), f(2, "sizeLimit", Quantity)],
);

static SECRET_VOLUME_SOURCE: Message = m(
    "SecretVolumeSource",
    &[
        f(1, "secretName", Str),
        r(2, "items", Msg(&KEY_TO_PATH)),
        f(3, "defaultMode", OptI32),
        f(4, "optional", OptBool),
    ],
);

static CONFIG_MAP_VOLUME_SOURCE: Message = m(
    "ConfigMapVolumeSource",
    &[
        f(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        r(2, "items", Msg(&KEY_TO_PATH)),
        f(3, "defaultMode", OptI32),
        f(4, "optional", OptBool),
    ],
);

static NFS_VOLUME_SOURCE: Message = m(
    "NFSVolumeSource",
    &[
        f(1, "server", Str),
        f(2, "path", Str),
        f(3, "readOnly", Bool),
    ],
);

static PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE: Message = m(
    "PersistentVolumeClaimVolumeSource",
    &[f(1, "claimName", Str), f(2, "readOnly", Bool)],
);

static DOWNWARD_API_VOLUME_FILE: Message = m(
    "DownwardAPIVolumeFile",
    &[
        f(1, "path", Str),
        f(2, "fieldRef", Msg(&OBJECT_FIELD_SELECTOR)),
        f(3, "resourceFieldRef", Msg(&RESOURCE_FIELD_SELECTOR)),
        f(4, "mode", OptI32),
    ],
);

static DOWNWARD_API_VOLUME_SOURCE: Message = m(
    "DownwardAPIVolumeSource",
    &[
        r(1, "items", Msg(&DOWNWARD_API_VOLUME_FILE)),
        f(2, "defaultMode", OptI32),
    ],
);

static DOWNWARD_API_PROJECTION: Message = m(
    "DownwardAPIProjection",
    &[r(1, "items", Msg(&DOWNWARD_API_VOLUME_FILE))],
);

static SECRET_PROJECTION: Message = m(
    "SecretProjection",
    &[
        f(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        r(2, "items", Msg(&KEY_TO_PATH)),
        f(4, "optional", OptBool),
    ],
);

static CONFIG_MAP_PROJECTION: Message = m(
    "ConfigMapProjection",
    &[
        f(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        r(2, "items", Msg(&KEY_TO_PATH)),
        f(4, "optional", OptBool),
    ],
);

static SERVICE_ACCOUNT_TOKEN_PROJECTION: Message = m(
    "ServiceAccountTokenProjection",
    &[
        f(1, "audience", Str),
        f(2, "expirationSeconds", OptI64),
        f(3, "path", Str),
    ],
);

static VOLUME_PROJECTION: Message = m(
    "VolumeProjection",
    &[
        f(1, "secret", Msg(&SECRET_PROJECTION)),
        f(2, "downwardAPI", Msg(&DOWNWARD_API_PROJECTION)),
        f(3, "configMap", Msg(&CONFIG_MAP_PROJECTION)),
        f(
            4,
            "serviceAccountToken",
            Msg(&SERVICE_ACCOUNT_TOKEN_PROJECTION),
        ),
    ],
);

static PROJECTED_VOLUME_SOURCE: Message = m(
    "ProjectedVolumeSource",
    &[
        r(1, "sources", Msg(&VOLUME_PROJECTION)),
        f(2, "defaultMode", OptI32),
    ],
);

static CSI_VOLUME_SOURCE: Message = m(
    "CSIVolumeSource",
    &[
        f(1, "driver", Str),
        f(2, "readOnly", OptBool),
        f(3, "fsType", OptStr),
        f(4, "volumeAttributes", MapStr),
        f(5, "nodePublishSecretRef", Msg(&LOCAL_OBJECT_REFERENCE)),
    ],
);

static VOLUME_SOURCE: Message = m(
    "VolumeSource",
    &[
        f(1, "hostPath", Msg(&HOST_PATH_VOLUME_SOURCE)),
        f(2, "emptyDir", Msg(&EMPTY_DIR_VOLUME_SOURCE)),
        f(6, "secret", Msg(&SECRET_VOLUME_SOURCE)),
        f(7, "nfs", Msg(&NFS_VOLUME_SOURCE)),
        f(
            10,
            "persistentVolumeClaim",
            Msg(&PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE),
        ),
        f(16, "downwardAPI", Msg(&DOWNWARD_API_VOLUME_SOURCE)),
        f(19, "configMap", Msg(&CONFIG_MAP_VOLUME_SOURCE)),
        f(26, "projected", Msg(&PROJECTED_VOLUME_SOURCE)),
        f(28, "csi", Msg(&CSI_VOLUME_SOURCE)),
    ],
);

static VOLUME: Message = m(
    "Volume",
    &[
        f(1, "name", Str),
        f(2, "volumeSource", Inline(&VOLUME_SOURCE)),
    ],
);

// ---- scheduling ----

static TOLERATION: Message = m(
    "Toleration",
    &[
        f(1, "key", Str),
        f(2, "operator", Str),
        f(3, "value", Str),
        f(4, "effect", Str),
        f(5, "tolerationSeconds", OptI64),
    ],
);

static NODE_SELECTOR_REQUIREMENT: Message = m(
    "NodeSelectorRequirement",
    &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)],
);

static NODE_SELECTOR_TERM: Message = m(
    "NodeSelectorTerm",
    &[
        r(1, "matchExpressions", Msg(&NODE_SELECTOR_REQUIREMENT)),
        r(2, "matchFields", Msg(&NODE_SELECTOR_REQUIREMENT)),
    ],
);

static NODE_SELECTOR: Message = m(
    "NodeSelector",
    &[r(1, "nodeSelectorTerms", Msg(&NODE_SELECTOR_TERM))],
);

static PREFERRED_SCHEDULING_TERM: Message = m(
    "PreferredSchedulingTerm",
    &[
        f(1, "weight", I32),
        f(2, "preference", Msg(&NODE_SELECTOR_TERM)),
    ],
);

static NODE_AFFINITY: Message = m(
    "NodeAffinity",
    &[
        f(
            1,
            "requiredDuringSchedulingIgnoredDuringExecution",
            Msg(&NODE_SELECTOR),
        ),
        r(
            2,
            "preferredDuringSchedulingIgnoredDuringExecution",
            Msg(&PREFERRED_SCHEDULING_TERM),
        ),
    ],
);

static POD_AFFINITY_TERM: Message = m(
    "PodAffinityTerm",
    &[
        f(1, "labelSelector", Msg(&LABEL_SELECTOR)),
        r(2, "namespaces", Str),
        f(3, "topologyKey", Str),
        f(4, "namespaceSelector", Msg(&LABEL_SELECTOR)),
    ],
);

static WEIGHTED_POD_AFFINITY_TERM: Message = m(
    "WeightedPodAffinityTerm",
    &[
        f(1, "weight", I32),
        f(2, "podAffinityTerm", Msg(&POD_AFFINITY_TERM)),
    ],
);

/// `PodAffinity` and `PodAntiAffinity` share their layout.
static POD_AFFINITY: Message = m(
    "PodAffinity",
    &[
        r(
            1,
            "requiredDuringSchedulingIgnoredDuringExecution",
            Msg(&POD_AFFINITY_TERM),
        ),
        r(
            2,
            "preferredDuringSchedulingIgnoredDuringExecution",
            Msg(&WEIGHTED_POD_AFFINITY_TERM),
        ),
    ],
);

static AFFINITY: Message = m(
    "Affinity",
    &[
        f(1, "nodeAffinity", Msg(&NODE_AFFINITY)),
        f(2, "podAffinity", Msg(&POD_AFFINITY)),
        f(3, "podAntiAffinity", Msg(&POD_AFFINITY)),
    ],
);

static TOPOLOGY_SPREAD_CONSTRAINT: Message = m(
    "TopologySpreadConstraint",
    &[
        f(1, "maxSkew", I32),
        f(2, "topologyKey", Str),
        f(3, "whenUnsatisfiable", Str),
        f(4, "labelSelector", Msg(&LABEL_SELECTOR)),
    ],
);

// ---- pods ----

static SYSCTL: Message = m("Sysctl", &[f(1, "name", Str), f(2, "value", Str)]);

static POD_SECURITY_CONTEXT: Message = m(
    "PodSecurityContext",
    &[
        f(1, "seLinuxOptions", Msg(&SE_LINUX_OPTIONS)),
        f(8, "windowsOptions", Msg(&WINDOWS_SECURITY_CONTEXT_OPTIONS)),
        f(2, "runAsUser", OptI64),
        f(6, "runAsGroup", OptI64),
        f(3, "runAsNonRoot", OptBool),
        r(4, "supplementalGroups", I64),
        f(5, "fsGroup", OptI64),
        r(7, "sysctls", Msg(&SYSCTL)),
        f(9, "fsGroupChangePolicy", OptStr),
        f(10, "seccompProfile", Msg(&SECCOMP_PROFILE)),
        f(11, "appArmorProfile", Msg(&APP_ARMOR_PROFILE)),
        f(12, "supplementalGroupsPolicy", OptStr),
        f(13, "seLinuxChangePolicy", OptStr),
    ],
);

static HOST_ALIAS: Message = m("HostAlias", &[f(1, "ip", Str), r(2, "hostnames", Str)]);

static POD_DNS_CONFIG_OPTION: Message = m(
    "PodDNSConfigOption",
    &[f(1, "name", Str), f(2, "value", OptStr)],
);

static POD_DNS_CONFIG: Message = m(
    "PodDNSConfig",
    &[
        r(1, "nameservers", Str),
        r(2, "searches", Str),
        r(3, "options", Msg(&POD_DNS_CONFIG_OPTION)),
    ],
);

static POD_OS: Message = m("PodOS", &[f(1, "name", Str)]);

static POD_SCHEDULING_GATE: Message = m("PodSchedulingGate", &[f(1, "name", Str)]);

static POD_READINESS_GATE: Message = m("PodReadinessGate", &[f(1, "conditionType", Str)]);

static POD_SPEC: Message = m(
    "PodSpec",
    &[
        r(1, "volumes", Msg(&VOLUME)),
        r(20, "initContainers", Msg(&CONTAINER)),
        r(2, "containers", Msg(&CONTAINER)),
        f(3, "restartPolicy", Str),
        f(4, "terminationGracePeriodSeconds", OptI64),
        f(5, "activeDeadlineSeconds", OptI64),
        f(6, "dnsPolicy", Str),
        f(7, "nodeSelector", MapStr),
        f(8, "serviceAccountName", Str),
        f(9, "serviceAccount", Str),
        f(21, "automountServiceAccountToken", OptBool),
        f(10, "nodeName", Str),
        f(11, "hostNetwork", Bool),
        f(12, "hostPID", Bool),
        f(13, "hostIPC", Bool),
        f(27, "shareProcessNamespace", OptBool),
        f(14, "securityContext", Msg(&POD_SECURITY_CONTEXT)),
        r(15, "imagePullSecrets", Msg(&LOCAL_OBJECT_REFERENCE)),
        f(16, "hostname", Str),
        f(17, "subdomain", Str),
        f(18, "affinity", Msg(&AFFINITY)),
        f(19, "schedulerName", Str),
        r(22, "tolerations", Msg(&TOLERATION)),
        r(23, "hostAliases", Msg(&HOST_ALIAS)),
        f(24, "priorityClassName", Str),
        f(25, "priority", OptI32),
        f(26, "dnsConfig", Msg(&POD_DNS_CONFIG)),
        r(28, "readinessGates", Msg(&POD_READINESS_GATE)),
        f(29, "runtimeClassName", OptStr),
        f(30, "enableServiceLinks", OptBool),
        f(31, "preemptionPolicy", OptStr),
        f(32, "overhead", MapQuantity),
        r(
            33,
            "topologySpreadConstraints",
            Msg(&TOPOLOGY_SPREAD_CONSTRAINT),
        ),
        f(35, "setHostnameAsFQDN", OptBool),
        f(36, "os", Msg(&POD_OS)),
        f(37, "hostUsers", OptBool),
        r(38, "schedulingGates", Msg(&POD_SCHEDULING_GATE)),
        f(40, "resources", Msg(&RESOURCE_REQUIREMENTS)),
        f(41, "hostnameOverride", OptStr),
    ],
);

static POD_CONDITION: Message = m(
    "PodCondition",
    &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(3, "lastProbeTime", Time),
        f(4, "lastTransitionTime", Time),
        f(5, "reason", Str),
        f(6, "message", Str),
    ],
);

static POD_IP: Message = m("PodIP", &[f(1, "ip", Str)]);

static POD_STATUS: Message = m(
    "PodStatus",
    &[
        f(17, "observedGeneration", I64),
        f(1, "phase", Str),
        r(2, "conditions", Msg(&POD_CONDITION)),
        f(3, "message", Str),
        f(4, "reason", Str),
        f(11, "nominatedNodeName", Str),
        f(5, "hostIP", Str),
        f(6, "podIP", Str),
        r(12, "podIPs", Msg(&POD_IP)),
        f(7, "startTime", Time),
        f(9, "qosClass", Str),
    ],
);

static POD: Message = m(
    "Pod",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&POD_SPEC)),
        f(3, "status", Msg(&POD_STATUS)),
    ],
);

static POD_TEMPLATE_SPEC: Message = m(
    "PodTemplateSpec",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&POD_SPEC)),
    ],
);

// ---- core/v1 configuration kinds ----

static NAMESPACE_SPEC: Message = m("NamespaceSpec", &[r(1, "finalizers", Str)]);

static NAMESPACE_STATUS: Message = m("NamespaceStatus", &[f(1, "phase", Str)]);

static NAMESPACE: Message = m(
    "Namespace",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&NAMESPACE_SPEC)),
        f(3, "status", Msg(&NAMESPACE_STATUS)),
    ],
);

static CONFIG_MAP: Message = m(
    "ConfigMap",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(4, "immutable", OptBool),
        f(2, "data", MapStr),
        f(3, "binaryData", MapBytes),
    ],
);

static SECRET: Message = m(
    "Secret",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(5, "immutable", OptBool),
        f(2, "data", MapBytes),
        f(4, "stringData", MapStr),
        f(3, "type", Str),
    ],
);

static SERVICE_ACCOUNT: Message = m(
    "ServiceAccount",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        r(2, "secrets", Msg(&OBJECT_REFERENCE)),
        r(3, "imagePullSecrets", Msg(&LOCAL_OBJECT_REFERENCE)),
        f(4, "automountServiceAccountToken", OptBool),
    ],
);

// ---- services ----

static SERVICE_PORT: Message = m(
    "ServicePort",
    &[
        f(1, "name", Str),
        f(2, "protocol", Str),
        f(6, "appProtocol", OptStr),
        f(3, "port", I32),
        f(4, "targetPort", IntOrString),
        f(5, "nodePort", I32),
    ],
);

static CLIENT_IP_CONFIG: Message = m("ClientIPConfig", &[f(1, "timeoutSeconds", OptI32)]);

static SESSION_AFFINITY_CONFIG: Message = m(
    "SessionAffinityConfig",
    &[f(1, "clientIP", Msg(&CLIENT_IP_CONFIG))],
);

static SERVICE_SPEC: Message = m(
    "ServiceSpec",
    &[
        r(1, "ports", Msg(&SERVICE_PORT)),
        f(2, "selector", MapStr),
        f(3, "clusterIP", Str),
        r(18, "clusterIPs", Str),
        f(4, "type", Str),
        r(5, "externalIPs", Str),
        f(7, "sessionAffinity", Str),
        f(8, "loadBalancerIP", Str),
        r(9, "loadBalancerSourceRanges", Str),
        f(10, "externalName", Str),
        f(11, "externalTrafficPolicy", Str),
        f(12, "healthCheckNodePort", I32),
        f(13, "publishNotReadyAddresses", Bool),
        f(14, "sessionAffinityConfig", Msg(&SESSION_AFFINITY_CONFIG)),
        r(19, "ipFamilies", Str),
        f(17, "ipFamilyPolicy", OptStr),
        f(20, "allocateLoadBalancerNodePorts", OptBool),
        f(21, "loadBalancerClass", OptStr),
        f(22, "internalTrafficPolicy", OptStr),
    ],
);

static SERVICE: Message = m(
    "Service",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&SERVICE_SPEC)),
    ],
);

// ---- apps/v1 ----

static ROLLING_UPDATE: Message = m(
    "RollingUpdateDeployment",
    &[
        f(1, "maxUnavailable", IntOrString),
        f(2, "maxSurge", IntOrString),
    ],
);

static DEPLOYMENT_STRATEGY: Message = m(
    "DeploymentStrategy",
    &[
        f(1, "type", Str),
        f(2, "rollingUpdate", Msg(&ROLLING_UPDATE)),
    ],
);

static DEPLOYMENT_SPEC: Message = m(
    "DeploymentSpec",
    &[
        f(1, "replicas", OptI32),
        f(2, "selector", Msg(&LABEL_SELECTOR)),
        f(3, "template", Msg(&POD_TEMPLATE_SPEC)),
        f(4, "strategy", Msg(&DEPLOYMENT_STRATEGY)),
        f(5, "minReadySeconds", I32),
        f(6, "revisionHistoryLimit", OptI32),
        f(7, "paused", Bool),
        f(9, "progressDeadlineSeconds", OptI32),
    ],
);

static DEPLOYMENT_CONDITION: Message = m(
    "DeploymentCondition",
    &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(6, "lastUpdateTime", Time),
        f(7, "lastTransitionTime", Time),
        f(4, "reason", Str),
        f(5, "message", Str),
    ],
);

static DEPLOYMENT_STATUS: Message = m(
    "DeploymentStatus",
    &[
        f(1, "observedGeneration", I64),
        f(2, "replicas", I32),
        f(3, "updatedReplicas", I32),
        f(7, "readyReplicas", I32),
        f(4, "availableReplicas", I32),
        f(5, "unavailableReplicas", I32),
        r(6, "conditions", Msg(&DEPLOYMENT_CONDITION)),
        f(8, "collisionCount", OptI32),
    ],
);

static DEPLOYMENT: Message = m(
    "Deployment",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&DEPLOYMENT_SPEC)),
        f(3, "status", Msg(&DEPLOYMENT_STATUS)),
    ],
);

static DAEMON_SET_UPDATE_STRATEGY: Message = m(
    "DaemonSetUpdateStrategy",
    &[
        f(1, "type", Str),
        f(2, "rollingUpdate", Msg(&ROLLING_UPDATE)),
    ],
);

static DAEMON_SET_SPEC: Message = m(
    "DaemonSetSpec",
    &[
        f(1, "selector", Msg(&LABEL_SELECTOR)),
        f(2, "template", Msg(&POD_TEMPLATE_SPEC)),
        f(3, "updateStrategy", Msg(&DAEMON_SET_UPDATE_STRATEGY)),
        f(4, "minReadySeconds", I32),
        f(6, "revisionHistoryLimit", OptI32),
    ],
);

static DAEMON_SET_STATUS: Message = m(
    "DaemonSetStatus",
    &[
        f(1, "currentNumberScheduled", I32),
        f(2, "numberMisscheduled", I32),
        f(3, "desiredNumberScheduled", I32),
        f(4, "numberReady", I32),
        f(5, "observedGeneration", I64),
        f(6, "updatedNumberScheduled", I32),
        f(7, "numberAvailable", I32),
        f(8, "numberUnavailable", I32),
        f(9, "collisionCount", OptI32),
    ],
);

static DAEMON_SET: Message = m(
    "DaemonSet",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&DAEMON_SET_SPEC)),
        f(3, "status", Msg(&DAEMON_SET_STATUS)),
    ],
);

static REPLICA_SET_SPEC: Message = m(
    "ReplicaSetSpec",
    &[
        f(1, "replicas", OptI32),
        f(4, "minReadySeconds", I32),
        f(2, "selector", Msg(&LABEL_SELECTOR)),
        f(3, "template", Msg(&POD_TEMPLATE_SPEC)),
    ],
);

static REPLICA_SET_STATUS: Message = m(
    "ReplicaSetStatus",
    &[
        f(1, "replicas", I32),
        f(2, "fullyLabeledReplicas", I32),
        f(4, "readyReplicas", I32),
        f(5, "availableReplicas", I32),
        f(3, "observedGeneration", I64),
    ],
);

static REPLICA_SET: Message = m(
    "ReplicaSet",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&REPLICA_SET_SPEC)),
        f(3, "status", Msg(&REPLICA_SET_STATUS)),
    ],
);

// ---- batch/v1 (batch/v1beta1 CronJob and JobTemplateSpec have the same field numbers and
// embed batch/v1 JobSpec) ----

static POD_FAILURE_POLICY_ON_EXIT_CODES: Message = m(
    "PodFailurePolicyOnExitCodesRequirement",
    &[
        f(1, "containerName", OptStr),
        f(2, "operator", Str),
        r(3, "values", I32),
    ],
);

static POD_FAILURE_POLICY_ON_POD_CONDITIONS: Message = m(
    "PodFailurePolicyOnPodConditionsPattern",
    &[f(1, "type", Str), f(2, "status", Str)],
);

static POD_FAILURE_POLICY_RULE: Message = m(
    "PodFailurePolicyRule",
    &[
        f(1, "action", Str),
        f(2, "onExitCodes", Msg(&POD_FAILURE_POLICY_ON_EXIT_CODES)),
        r(
            3,
            "onPodConditions",
            Msg(&POD_FAILURE_POLICY_ON_POD_CONDITIONS),
        ),
    ],
);

static POD_FAILURE_POLICY: Message = m(
    "PodFailurePolicy",
    &[r(1, "rules", Msg(&POD_FAILURE_POLICY_RULE))],
);

static SUCCESS_POLICY_RULE: Message = m(
    "SuccessPolicyRule",
    &[
        f(1, "succeededIndexes", OptStr),
        f(2, "succeededCount", OptI32),
    ],
);

static SUCCESS_POLICY: Message = m("SuccessPolicy", &[r(1, "rules", Msg(&SUCCESS_POLICY_RULE))]);

static JOB_SPEC: Message = m(
    "JobSpec",
    &[
        f(1, "parallelism", OptI32),
        f(2, "completions", OptI32),
        f(3, "activeDeadlineSeconds", OptI64),
        f(11, "podFailurePolicy", Msg(&POD_FAILURE_POLICY)),
        f(16, "successPolicy", Msg(&SUCCESS_POLICY)),
        f(7, "backoffLimit", OptI32),
        f(12, "backoffLimitPerIndex", OptI32),
        f(13, "maxFailedIndexes", OptI32),
        f(4, "selector", Msg(&LABEL_SELECTOR)),
        f(5, "manualSelector", OptBool),
        f(6, "template", Msg(&POD_TEMPLATE_SPEC)),
        f(8, "ttlSecondsAfterFinished", OptI32),
        f(9, "completionMode", OptStr),
        f(10, "suspend", OptBool),
        f(14, "podReplacementPolicy", OptStr),
        f(15, "managedBy", OptStr),
    ],
);

static JOB_CONDITION: Message = m(
    "JobCondition",
    &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(3, "lastProbeTime", Time),
        f(4, "lastTransitionTime", Time),
        f(5, "reason", Str),
        f(6, "message", Str),
    ],
);

static JOB_STATUS: Message = m(
    "JobStatus",
    &[
        r(1, "conditions", Msg(&JOB_CONDITION)),
        f(2, "startTime", Time),
        f(3, "completionTime", Time),
        f(4, "active", I32),
        f(5, "succeeded", I32),
        f(6, "failed", I32),
        f(11, "terminating", OptI32),
        f(7, "completedIndexes", Str),
        f(10, "failedIndexes", OptStr),
        f(9, "ready", OptI32),
    ],
);

static JOB: Message = m(
    "Job",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&JOB_SPEC)),
        f(3, "status", Msg(&JOB_STATUS)),
    ],
);

static JOB_TEMPLATE_SPEC: Message = m(
    "JobTemplateSpec",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&JOB_SPEC)),
    ],
);

static CRON_JOB_SPEC: Message = m(
    "CronJobSpec",
    &[
        f(1, "schedule", Str),
        f(8, "timeZone", OptStr),
        f(2, "startingDeadlineSeconds", OptI64),
        f(3, "concurrencyPolicy", Str),
        f(4, "suspend", OptBool),
        f(5, "jobTemplate", Msg(&JOB_TEMPLATE_SPEC)),
        f(6, "successfulJobsHistoryLimit", OptI32),
        f(7, "failedJobsHistoryLimit", OptI32),
    ],
);

static CRON_JOB_STATUS: Message = m(
    "CronJobStatus",
    &[
        r(1, "active", Msg(&OBJECT_REFERENCE)),
        f(4, "lastScheduleTime", Time),
        f(5, "lastSuccessfulTime", Time),
    ],
);

static CRON_JOB: Message = m(
    "CronJob",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&CRON_JOB_SPEC)),
        f(3, "status", Msg(&CRON_JOB_STATUS)),
    ],
);

// ---- events and leases (client-go's event recorders and leader election send protobuf) ----

static EVENT_SOURCE: Message = m("EventSource", &[f(1, "component", Str), f(2, "host", Str)]);

static EVENT_SERIES: Message = m(
    "EventSeries",
    &[f(1, "count", I32), f(2, "lastObservedTime", MicroTime)],
);

static EVENT: Message = m(
    "Event",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "involvedObject", Msg(&OBJECT_REFERENCE)),
        f(3, "reason", Str),
        f(4, "message", Str),
        f(5, "source", Msg(&EVENT_SOURCE)),
        f(6, "firstTimestamp", Time),
        f(7, "lastTimestamp", Time),
        f(8, "count", I32),
        f(9, "type", Str),
        f(10, "eventTime", MicroTime),
        f(11, "series", Msg(&EVENT_SERIES)),
        f(12, "action", Str),
        f(13, "related", Msg(&OBJECT_REFERENCE)),
        f(14, "reportingComponent", Str),
        f(15, "reportingInstance", Str),
    ],
);

// ---- k8s.io/api core/v1: nodes ----

static TAINT: Message = m(
    "Taint",
    &[
        f(1, "key", OptStr),
        f(2, "value", Str),
        f(3, "effect", OptStr),
        f(4, "timeAdded", Time),
    ],
);

static CONFIG_MAP_NODE_CONFIG_SOURCE: Message = m(
    "ConfigMapNodeConfigSource",
    &[
        f(1, "namespace", OptStr),
        f(2, "name", OptStr),
        f(3, "uid", Str),
        f(4, "resourceVersion", Str),
        f(5, "kubeletConfigKey", OptStr),
    ],
);

static NODE_CONFIG_SOURCE: Message = m(
    "NodeConfigSource",
    &[f(2, "configMap", Msg(&CONFIG_MAP_NODE_CONFIG_SOURCE))],
);

static NODE_SPEC: Message = m(
    "NodeSpec",
    &[
        f(1, "podCIDR", Str),
        r(7, "podCIDRs", Str),
        f(3, "providerID", Str),
        f(4, "unschedulable", Bool),
        r(5, "taints", Msg(&TAINT)),
        f(6, "configSource", Msg(&NODE_CONFIG_SOURCE)),
        f(2, "externalID", Str),
    ],
);

static NODE_ADDRESS: Message = m(
    "NodeAddress",
    &[f(1, "type", OptStr), f(2, "address", OptStr)],
);

static NODE_CONDITION: Message = m(
    "NodeCondition",
    &[
        f(1, "type", OptStr),
        f(2, "status", OptStr),
        f(3, "lastHeartbeatTime", Time),
        f(4, "lastTransitionTime", Time),
        f(5, "reason", Str),
        f(6, "message", Str),
    ],
);

/// `Port` is capitalised in JSON too.
static DAEMON_ENDPOINT: Message = m("DaemonEndpoint", &[f(1, "Port", OptI32)]);

static NODE_DAEMON_ENDPOINTS: Message = m(
    "NodeDaemonEndpoints",
    &[f(1, "kubeletEndpoint", Msg(&DAEMON_ENDPOINT))],
);

static NODE_SWAP_STATUS: Message = m("NodeSwapStatus", &[f(1, "capacity", OptI64)]);

static NODE_SYSTEM_INFO: Message = m(
    "NodeSystemInfo",
    &[
        f(1, "machineID", OptStr),
        f(2, "systemUUID", OptStr),
        f(3, "bootID", OptStr),
        f(4, "kernelVersion", OptStr),
        f(5, "osImage", OptStr),
        f(6, "containerRuntimeVersion", OptStr),
        f(7, "kubeletVersion", OptStr),
        f(8, "kubeProxyVersion", OptStr),
        f(9, "operatingSystem", OptStr),
        f(10, "architecture", OptStr),
        f(11, "swap", Msg(&NODE_SWAP_STATUS)),
    ],
);

static CONTAINER_IMAGE: Message = m(
    "ContainerImage",
    &[r(1, "names", Str), f(2, "sizeBytes", I64)],
);

static ATTACHED_VOLUME: Message = m(
    "AttachedVolume",
    &[f(1, "name", OptStr), f(2, "devicePath", OptStr)],
);

static NODE_CONFIG_STATUS: Message = m(
    "NodeConfigStatus",
    &[
        f(1, "assigned", Msg(&NODE_CONFIG_SOURCE)),
        f(2, "active", Msg(&NODE_CONFIG_SOURCE)),
        f(3, "lastKnownGood", Msg(&NODE_CONFIG_SOURCE)),
        f(4, "error", Str),
    ],
);

static NODE_RUNTIME_HANDLER_FEATURES: Message = m(
    "NodeRuntimeHandlerFeatures",
    &[
        f(1, "recursiveReadOnlyMounts", OptBool),
        f(2, "userNamespaces", OptBool),
    ],
);

static NODE_RUNTIME_HANDLER: Message = m(
    "NodeRuntimeHandler",
    &[
        f(1, "name", Str),
        f(2, "features", Msg(&NODE_RUNTIME_HANDLER_FEATURES)),
    ],
);

static NODE_FEATURES: Message = m("NodeFeatures", &[f(1, "supplementalGroupsPolicy", OptBool)]);

static NODE_STATUS: Message = m(
    "NodeStatus",
    &[
        f(1, "capacity", MapQuantity),
        f(2, "allocatable", MapQuantity),
        f(3, "phase", Str),
        r(4, "conditions", Msg(&NODE_CONDITION)),
        r(5, "addresses", Msg(&NODE_ADDRESS)),
        f(6, "daemonEndpoints", Msg(&NODE_DAEMON_ENDPOINTS)),
        f(7, "nodeInfo", Msg(&NODE_SYSTEM_INFO)),
        r(8, "images", Msg(&CONTAINER_IMAGE)),
        r(9, "volumesInUse", Str),
        r(10, "volumesAttached", Msg(&ATTACHED_VOLUME)),
        f(11, "config", Msg(&NODE_CONFIG_STATUS)),
        r(12, "runtimeHandlers", Msg(&NODE_RUNTIME_HANDLER)),
        f(13, "features", Msg(&NODE_FEATURES)),
        r(14, "declaredFeatures", Str),
    ],
);

static NODE: Message = m(
    "Node",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&NODE_SPEC)),
        f(3, "status", Msg(&NODE_STATUS)),
    ],
);

// ---- k8s.io/api policy/v1 ----

/// A pod's eviction (`POST .../pods/<name>/eviction`).
static EVICTION: Message = m(
    "Eviction",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "deleteOptions", Msg(&DELETE_OPTIONS)),
    ],
);

// ---- k8s.io/api authentication/v1 ----

static BOUND_OBJECT_REFERENCE: Message = m(
    "BoundObjectReference",
    &[
        f(1, "kind", Str),
        f(2, "apiVersion", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
    ],
);

static TOKEN_REQUEST_SPEC: Message = m(
    "TokenRequestSpec",
    &[
        r(1, "audiences", Str),
        f(4, "expirationSeconds", OptI64),
        f(3, "boundObjectRef", Msg(&BOUND_OBJECT_REFERENCE)),
    ],
);

/// A service-account token request (`POST .../serviceaccounts/<name>/token`).
static TOKEN_REQUEST: Message = m(
    "TokenRequest",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&TOKEN_REQUEST_SPEC)),
    ],
);

static LEASE_SPEC: Message = m(
    "LeaseSpec",
    &[
        f(1, "holderIdentity", OptStr),
        f(2, "leaseDurationSeconds", OptI32),
        f(3, "acquireTime", MicroTime),
        f(4, "renewTime", MicroTime),
        f(5, "leaseTransitions", OptI32),
        f(6, "strategy", OptStr),
        f(7, "preferredHolder", OptStr),
    ],
);

static LEASE: Message = m(
    "Lease",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&LEASE_SPEC)),
    ],
);

// ---- k8s.io/api policy/v1: disruption budgets ----

static PDB_SPEC: Message = m(
    "PodDisruptionBudgetSpec",
    &[
        f(1, "minAvailable", IntOrString),
        f(2, "selector", Msg(&LABEL_SELECTOR)),
        f(3, "maxUnavailable", IntOrString),
        f(4, "unhealthyPodEvictionPolicy", OptStr),
    ],
);

static POD_DISRUPTION_BUDGET: Message = m(
    "PodDisruptionBudget",
    &[
        f(1, "metadata", Msg(&OBJECT_META)),
        f(2, "spec", Msg(&PDB_SPEC)),
    ],
);

/// The top-level message of each (apiVersion, kind) the decoder accepts.
pub static KINDS: &[(&str, &str, &Message)] = &[
    ("v1", "Namespace", &NAMESPACE),
    ("v1", "ConfigMap", &CONFIG_MAP),
    ("v1", "Secret", &SECRET),
    ("v1", "ServiceAccount", &SERVICE_ACCOUNT),
    ("v1", "Pod", &POD),
    ("v1", "Service", &SERVICE),
    ("v1", "Event", &EVENT),
    ("v1", "Node", &NODE),
    ("policy/v1", "Eviction", &EVICTION),
    ("policy/v1beta1", "Eviction", &EVICTION),
    ("authentication.k8s.io/v1", "TokenRequest", &TOKEN_REQUEST),
    ("coordination.k8s.io/v1", "Lease", &LEASE),
    ("apps/v1", "Deployment", &DEPLOYMENT),
    ("apps/v1", "DaemonSet", &DAEMON_SET),
    ("apps/v1", "ReplicaSet", &REPLICA_SET),
    ("batch/v1", "Job", &JOB),
    ("batch/v1", "CronJob", &CRON_JOB),
    ("batch/v1beta1", "CronJob", &CRON_JOB),
    ("policy/v1", "PodDisruptionBudget", &POD_DISRUPTION_BUDGET),
];

/// The message describing `apiVersion`/`kind`, if any. `DeleteOptions` is registered in
/// every group version, so it is found under any `apiVersion`.
#[must_use]
pub fn lookup(api_version: &str, kind: &str) -> Option<&'static Message> {
    if kind == "DeleteOptions" {
        return Some(&DELETE_OPTIONS);
    }
    KINDS
        .iter()
        .find(|(av, k, _)| *av == api_version && *k == kind)
        .map(|(_, _, m)| *m)
}
