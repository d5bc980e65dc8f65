//! The simulated Azure's state and rules, free of HTTP: compute resources and their identities,
//! the identity and service-principal registry, long-running operations, injected faults, the
//! per-subscription write budget, and the counters tests read.
//!
//! Handlers lock [`Inner`], decide, and unlock before any deliberate delay, so a slow or hung
//! answer never blocks other requests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    /// Any ARM request (GET, PATCH, poll).
    AnyArm,
    /// ARM GET of a VM or scale set.
    ArmGet,
    /// ARM PATCH of a VM or scale set.
    ArmPatch,
    /// ARM long-running-operation polls.
    ArmPoll,
    /// Metadata-service token requests (any node).
    Imds,
    /// Azure AD token requests.
    Aad,
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer this status with an ARM (or OAuth) error body.
    Status(u16),
    /// Answer 429 with `Retry-After` in seconds; opens the subscription's throttle window.
    Throttle {
        /// Window in whole seconds.
        retry_after_secs: u64,
        /// Send the header as an HTTP date instead of seconds.
        as_http_date: bool,
    },
    /// Never answer (until the client gives up).
    Hang,
    /// (GET only) answer, then assign this user-assigned identity (resource id) to the resource
    /// as someone else would through ARM: the change lands between the reader's read and its
    /// write.
    AssignAfterRead(String),
    /// Answer normally after this extra delay.
    Slow(Duration),
    /// (PATCH only) apply the change as usual, then close the connection without answering:
    /// the caller cannot tell whether its write happened (a timeout or a dropped connection
    /// after the change was stored).
    AnswerLost,
    /// (PATCH only) accept, then let the long-running operation end `Failed` with this error;
    /// the change is rolled back.
    LroFailure {
        /// Error code in the operation status.
        code: String,
        /// Error message.
        message: String,
    },
}

/// A fault for the next `remaining` matching requests.
#[derive(Clone, Debug)]
pub struct Fault {
    /// Which requests.
    pub target: FaultTarget,
    /// What happens.
    pub kind: FaultKind,
    /// How many more requests it applies to.
    pub remaining: u32,
}

/// One request the simulator answered (for timestamp checks in tests).
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When the answer was ready (after any simulated latency).
    pub at: Instant,
    /// When the request reached its handler.
    pub received: Instant,
    /// The client's address and port (a new port is a new connection).
    pub peer: Option<std::net::SocketAddr>,
    /// HTTP method.
    pub method: String,
    /// Path (without query), exactly as it arrived in the request line.
    pub path: String,
    /// Query, exactly as it arrived ("" when none).
    pub query: String,
    /// Subscription the request concerned, if any.
    pub subscription: Option<String>,
    /// The node whose metadata service received the request (`None` for ARM and Azure AD).
    pub node: Option<String>,
    /// Status answered (0 when the answer was lost: the connection closed without one).
    pub status: u16,
    /// The `User-Agent` header as sent (empty when absent).
    pub user_agent: String,
}

/// Per-operation counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// ARM GETs per compute resource key (`vmss/<sub>/<rg>/<name>`).
    pub gets: BTreeMap<String, u64>,
    /// ARM PATCHes per compute resource key (every PATCH received, accepted or not).
    pub patches: BTreeMap<String, u64>,
    /// PATCHes that changed state.
    pub patches_applied: u64,
    /// 429 answers.
    pub throttled: u64,
    /// Requests for a subscription that arrived inside its throttle window (after the grace).
    pub throttle_violations: u64,
    /// Long-running-operation polls.
    pub lro_polls: u64,
    /// Injected faults served.
    pub faults: u64,
    /// ARM requests refused for a missing or bad bearer token.
    pub unauthenticated: u64,
    /// Metadata-service tokens issued.
    pub imds_tokens: u64,
    /// Metadata-service errors answered (throttled answers included).
    pub imds_errors: u64,
    /// Metadata-service 429s for its per-VM identity limits ([`super::ImdsLimits`]).
    pub imds_throttled: u64,
    /// Azure AD tokens issued.
    pub aad_tokens: u64,
    /// Azure AD errors answered.
    pub aad_errors: u64,
    /// Azure AD tokens issued for a federated assertion (also counted in `aad_tokens`).
    pub aad_federated_tokens: u64,
    /// ARM PATCHes that write an identity, by lower-cased identity resource id: every PATCH
    /// received whose body names it (adding or removing it, accepted or not), and every applied
    /// PATCH that removes it without naming it (`"type": "None"`).
    pub identity_writes: BTreeMap<String, u64>,
}

impl Counters {
    /// Total ARM PATCHes.
    #[must_use]
    pub fn total_patches(&self) -> u64 {
        self.patches.values().sum()
    }

    /// ARM PATCHes that named `resource_id` (case-insensitive).
    #[must_use]
    pub fn writes_naming(&self, resource_id: &str) -> u64 {
        self.identity_writes
            .get(&resource_id.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Total ARM GETs of compute resources.
    #[must_use]
    pub fn total_gets(&self) -> u64 {
        self.gets.values().sum()
    }
}

/// A user-assigned identity in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    /// Identity name.
    pub name: String,
    /// ARM resource id.
    pub resource_id: String,
    /// Client id.
    pub client_id: String,
    /// Principal (object) id.
    pub principal_id: String,
    /// When false, assigning it is refused with `LinkedAuthorizationFailed` (the caller lacks
    /// `userAssignedIdentities/assign/action` on it).
    pub assignable: bool,
}

/// A service principal Azure AD knows.
#[derive(Clone, Debug)]
pub struct ServicePrincipal {
    /// Client (application) id.
    pub client_id: String,
    /// Principal (object) id.
    pub principal_id: String,
    /// Tenants it may sign in to (home first, then auxiliary).
    pub tenants: Vec<String>,
    /// Client secret, for type 1.
    pub secret: Option<String>,
    /// `x5t` thumbprint and PKCS#1 RSA public key of its certificate, for type 2.
    pub certificate: Option<(String, Vec<u8>)>,
}

/// A VM or scale set.
#[derive(Clone, Debug)]
pub(crate) struct Compute {
    pub kind: &'static str,
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
    pub system_assigned: bool,
    /// Assigned identity ids (as first written) and when each was assigned.
    pub user_assigned: Vec<(String, Instant)>,
    pub provisioning_state: String,
    /// Model version, bumped by every change: served as `etag` (`"<n>"`, as Compute writes
    /// it) and checked against `If-Match` on PATCH.
    pub etag: u64,
}

impl Compute {
    /// The `etag` value as ARM serves it (a quoted version number).
    pub fn etag_value(&self) -> String {
        format!("\"{}\"", self.etag)
    }

    pub fn arm_type(&self) -> &'static str {
        if self.kind == "vmss" {
            "Microsoft.Compute/virtualMachineScaleSets"
        } else {
            "Microsoft.Compute/virtualMachines"
        }
    }

    pub fn id(&self) -> String {
        let seg = if self.kind == "vmss" {
            "virtualMachineScaleSets"
        } else {
            "virtualMachines"
        };
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{seg}/{}",
            self.subscription, self.resource_group, self.name
        )
    }

    pub fn identity_type(&self) -> &'static str {
        match (self.system_assigned, !self.user_assigned.is_empty()) {
            (false, false) => "None",
            (true, false) => "SystemAssigned",
            (false, true) => "UserAssigned",
            (true, true) => "SystemAssigned, UserAssigned",
        }
    }

    pub fn system_principal_id(&self) -> String {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            self.id().to_lowercase().as_bytes(),
        )
        .to_string()
    }
}

/// A long-running operation: it ends at `due` (PATCH received + the write's latency),
/// whether or not anyone polls it.
#[derive(Clone, Debug)]
pub(crate) struct Operation {
    pub resource_key: String,
    pub due: Instant,
    pub failure: Option<(String, String)>,
    /// State to restore if the operation fails.
    pub rollback: Option<(bool, Vec<(String, Instant)>)>,
    pub done: bool,
}

/// Everything behind the simulator's lock.
pub(crate) struct Inner {
    pub tenant_id: String,
    pub compute: HashMap<String, Compute>,
    /// Identities by lower-cased resource id.
    pub identities: BTreeMap<String, IdentityRecord>,
    /// Service principals by client id (lower-case).
    pub service_principals: BTreeMap<String, ServicePrincipal>,
    pub operations: HashMap<String, Operation>,
    /// Ids of operations not yet ended, so ending the due ones does not walk every operation.
    pub running: Vec<String>,
    pub faults: VecDeque<Fault>,
    /// Write budget: (window start, writes in window) per subscription.
    pub budget_windows: HashMap<String, (Instant, u32)>,
    /// Throttle windows: (opened at, closed until) per subscription.
    pub throttle_windows: HashMap<String, (Instant, Instant)>,
    pub counters: Counters,
    pub log: Vec<RequestRecord>,
    /// Federated identity credentials by lower-cased identity resource id.
    pub federated: BTreeMap<String, Vec<super::FederatedCredential>>,
    /// Each node's metadata-service throttle, by node name.
    pub imds_throttle: HashMap<String, super::imds_limits::NodeThrottle>,
}

/// Result of checking an identity PATCH body.
pub(crate) enum PatchError {
    /// 4xx with ARM code and message.
    Refused(u16, &'static str, String),
}

impl Inner {
    /// Ends every operation whose time has come: a failed one puts back the identities it
    /// changed; the resource leaves `Updating`. Called before any ARM request is answered, so
    /// what a poll or a GET shows depends only on time, never on how often anyone looked.
    pub fn end_due_operations(&mut self, now: Instant) {
        if self.running.is_empty() {
            return;
        }
        let running = std::mem::take(&mut self.running);
        for id in running {
            let Some(op) = self.operations.get_mut(&id) else {
                continue;
            };
            if op.due > now {
                self.running.push(id);
                continue;
            }
            op.done = true;
            let failed = op.failure.is_some();
            let rollback = op.rollback.take();
            let key = op.resource_key.clone();
            if let Some(c) = self.compute.get_mut(&key) {
                if failed && let Some((system, ua)) = rollback {
                    c.system_assigned = system;
                    c.user_assigned = ua;
                    c.etag += 1;
                }
                if c.provisioning_state.eq_ignore_ascii_case("updating") {
                    c.provisioning_state = "Succeeded".into();
                }
            }
        }
    }

    /// Takes the next fault matching `target`, if any.
    pub fn take_fault(&mut self, target: FaultTarget) -> Option<FaultKind> {
        let idx = self.faults.iter().position(|f| {
            f.target == target
                || (f.target == FaultTarget::AnyArm
                    && matches!(
                        target,
                        FaultTarget::ArmGet | FaultTarget::ArmPatch | FaultTarget::ArmPoll
                    ))
        })?;
        let fault = &mut self.faults[idx];
        // An LRO failure only makes sense for a PATCH.
        if matches!(
            fault.kind,
            FaultKind::LroFailure { .. } | FaultKind::AnswerLost
        ) && target != FaultTarget::ArmPatch
        {
            return None;
        }
        fault.remaining = fault.remaining.saturating_sub(1);
        let kind = fault.kind.clone();
        if fault.remaining == 0 {
            self.faults.remove(idx);
        }
        self.counters.faults += 1;
        Some(kind)
    }

    /// Records an arrival; counts it as a violation if it falls inside the subscription's
    /// throttle window (after `grace`, which covers requests already in flight).
    pub fn arrive(&mut self, subscription: Option<&str>, grace: Duration) {
        if let Some(sub) = subscription
            && let Some((opened, until)) = self.throttle_windows.get(&sub.to_ascii_lowercase())
        {
            let now = Instant::now();
            if now > *opened + grace && now < *until {
                self.counters.throttle_violations += 1;
            }
        }
    }

    /// Opens a throttle window for `subscription`.
    pub fn open_throttle_window(&mut self, subscription: &str, window: Duration) {
        let now = Instant::now();
        self.throttle_windows
            .insert(subscription.to_ascii_lowercase(), (now, now + window));
        self.counters.throttled += 1;
    }

    /// Seconds left in the subscription's throttle window, if it is open.
    pub fn throttled_for(&self, subscription: &str) -> Option<u64> {
        let (_, until) = self
            .throttle_windows
            .get(&subscription.to_ascii_lowercase())?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Charges one write against the budget; `Some(retry_after_secs)` when over budget.
    pub fn charge_write(
        &mut self,
        subscription: &str,
        budget: Option<(u32, Duration)>,
    ) -> Option<u64> {
        let (writes, window) = budget?;
        let now = Instant::now();
        let slot = self
            .budget_windows
            .entry(subscription.to_ascii_lowercase())
            .or_insert((now, 0));
        if now >= slot.0 + window {
            *slot = (now, 0);
        }
        slot.1 += 1;
        if slot.1 <= writes {
            return None;
        }
        let left = (slot.0 + window).saturating_duration_since(now);
        Some(left.as_secs_f64().ceil().max(1.0) as u64)
    }

    pub fn identity(&self, id: &str) -> Option<&IdentityRecord> {
        self.identities.get(&id.to_ascii_lowercase())
    }

    /// The ARM JSON of a compute resource.
    pub fn resource_json(&self, c: &Compute, location: &str) -> Value {
        let mut body = json!({
            "id": c.id(),
            "name": c.name,
            "type": c.arm_type(),
            "location": location,
            "etag": c.etag_value(),
            "properties": { "provisioningState": c.provisioning_state },
        });
        if c.system_assigned || !c.user_assigned.is_empty() {
            let mut identity = json!({ "type": c.identity_type() });
            if c.system_assigned {
                identity["principalId"] = json!(c.system_principal_id());
                identity["tenantId"] = json!(self.tenant_id);
            }
            if !c.user_assigned.is_empty() {
                let mut map = Map::new();
                for (id, _) in &c.user_assigned {
                    let rec = self.identity(id);
                    map.insert(
                        id.clone(),
                        json!({
                            "principalId": rec.map(|r| r.principal_id.clone()).unwrap_or_default(),
                            "clientId": rec.map(|r| r.client_id.clone()).unwrap_or_default(),
                        }),
                    );
                }
                identity["userAssignedIdentities"] = Value::Object(map);
            }
            body["identity"] = identity;
        }
        body
    }

    /// Checks an identity PATCH body against `c` with ARM's rules and returns the resulting
    /// (system-assigned, user-assigned ids). Nothing is changed here.
    pub fn evaluate_patch(
        &self,
        c: &Compute,
        body: &Value,
    ) -> Result<Option<(bool, Vec<String>)>, PatchError> {
        let invalid = |msg: String| PatchError::Refused(400, "InvalidRequestContent", msg);
        let Some(obj) = body.as_object() else {
            return Err(invalid(
                "The request content was invalid and could not be deserialized: the body must be a JSON object.".into(),
            ));
        };
        let Some(identity) = obj.get("identity") else {
            return Ok(None);
        };
        if identity.is_null() {
            return Ok(None);
        }
        let Some(identity) = identity.as_object() else {
            return Err(invalid(
                "The request content was invalid and could not be deserialized: 'identity' must be an object.".into(),
            ));
        };
        let kind = match identity.get("type") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(invalid(
                    "The request content was invalid and could not be deserialized: 'identity.type' must be a string.".into(),
                ));
            }
            None => {
                return Err(PatchError::Refused(
                    400,
                    "InvalidParameter",
                    "Required parameter 'identity.type' is missing (null).".into(),
                ));
            }
        };
        let mut system = false;
        let mut user = false;
        for part in kind.split(',').map(|p| p.trim().to_ascii_lowercase()) {
            match part.as_str() {
                "systemassigned" => system = true,
                "userassigned" => user = true,
                "none" if !kind.contains(',') => {}
                _ => {
                    return Err(PatchError::Refused(
                        400,
                        "InvalidParameter",
                        format!(
                            "The value '{kind}' of parameter 'identity.type' is not valid. Allowed values are 'None', 'SystemAssigned', 'UserAssigned', 'SystemAssigned, UserAssigned'."
                        ),
                    ));
                }
            }
        }
        let entries: Vec<(String, bool)> = match identity.get("userAssignedIdentities") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => {
                let mut v = Vec::new();
                for (id, val) in m {
                    match val {
                        Value::Null => v.push((id.clone(), false)),
                        Value::Object(_) => v.push((id.clone(), true)),
                        _ => {
                            return Err(invalid(format!(
                                "The request content was invalid and could not be deserialized: the value for user-assigned identity '{id}' must be an object or null."
                            )));
                        }
                    }
                }
                v
            }
            Some(_) => {
                return Err(invalid(
                    "The request content was invalid and could not be deserialized: 'identity.userAssignedIdentities' must be an object.".into(),
                ));
            }
        };
        if !user {
            if entries.iter().any(|(_, add)| *add) {
                return Err(PatchError::Refused(
                    400,
                    "InvalidParameter",
                    format!(
                        "Parameter 'identity.userAssignedIdentities' cannot be specified with identity type '{kind}'; the type must include 'UserAssigned'."
                    ),
                ));
            }
            return Ok(Some((system, Vec::new())));
        }
        let mut after: Vec<String> = c.user_assigned.iter().map(|(id, _)| id.clone()).collect();
        let mut unknown = Vec::new();
        let mut unauthorized = Vec::new();
        for (id, add) in &entries {
            if *add {
                match self.identity(id) {
                    None => unknown.push(id.clone()),
                    Some(r) if !r.assignable => unauthorized.push(id.clone()),
                    Some(_) => {
                        if !after.iter().any(|x| x.eq_ignore_ascii_case(id)) {
                            after.push(id.clone());
                        }
                    }
                }
            } else {
                after.retain(|x| !x.eq_ignore_ascii_case(id));
            }
        }
        if !unknown.is_empty() {
            let list = unknown
                .iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PatchError::Refused(
                400,
                "FailedIdentityOperation",
                format!(
                    "Identity operation for resource '{}' failed with error 'Failed to perform resource identity operation. Status: 'BadRequest'. Response: {{\"error\":{{\"code\":\"BadRequest\",\"message\":\"Resource(s) {list} were not found.\"}}}}'.",
                    c.id()
                ),
            ));
        }
        if !unauthorized.is_empty() {
            let list = unauthorized.join(",");
            return Err(PatchError::Refused(
                403,
                "LinkedAuthorizationFailed",
                format!(
                    "The client has permission to perform action '{}/write' on scope '{}', however it does not have permission to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '{list}' or the linked scope(s) are invalid.",
                    c.arm_type(),
                    c.id()
                ),
            ));
        }
        if after.is_empty() {
            return Err(PatchError::Refused(
                400,
                "InvalidParameter",
                format!(
                    "Parameter 'identity.userAssignedIdentities' must contain at least one identity when identity type is '{kind}'."
                ),
            ));
        }
        Ok(Some((system, after)))
    }
}

/// Lower-case key of a compute resource.
pub(crate) fn compute_key(kind: &str, sub: &str, rg: &str, name: &str) -> String {
    format!("{kind}/{sub}/{rg}/{name}").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a";
    const ID_B: &str = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/b";

    fn inner() -> Inner {
        let mut identities = BTreeMap::new();
        for (id, assignable) in [(ID_A, true), (ID_B, false)] {
            identities.insert(
                id.to_ascii_lowercase(),
                IdentityRecord {
                    name: id.rsplit('/').next().unwrap().into(),
                    resource_id: id.into(),
                    client_id: format!("client-{id}"),
                    principal_id: format!("principal-{id}"),
                    assignable,
                },
            );
        }
        Inner {
            tenant_id: "t".into(),
            compute: HashMap::new(),
            identities,
            service_principals: BTreeMap::new(),
            operations: HashMap::new(),
            running: Vec::new(),
            faults: VecDeque::new(),
            budget_windows: HashMap::new(),
            throttle_windows: HashMap::new(),
            counters: Counters::default(),
            log: Vec::new(),
            federated: BTreeMap::new(),
            imds_throttle: HashMap::new(),
        }
    }

    fn vmss(system: bool, ua: &[&str]) -> Compute {
        Compute {
            kind: "vmss",
            subscription: "s".into(),
            resource_group: "rg".into(),
            name: "v".into(),
            system_assigned: system,
            user_assigned: ua.iter().map(|i| (i.to_string(), Instant::now())).collect(),
            provisioning_state: "Succeeded".into(),
            etag: 1,
        }
    }

    fn refused(r: Result<Option<(bool, Vec<String>)>, PatchError>) -> (u16, &'static str, String) {
        match r {
            Err(PatchError::Refused(s, c, m)) => (s, c, m),
            Ok(v) => panic!("accepted: {v:?}"),
        }
    }

    #[test]
    fn type_none_or_system_assigned_drops_every_user_assigned_identity() {
        let i = inner();
        let c = vmss(true, &[ID_A]);
        let r = i.evaluate_patch(&c, &json!({"identity": {"type": "SystemAssigned"}}));
        assert_eq!(r.ok().flatten(), Some((true, vec![])));
        let r = i.evaluate_patch(&c, &json!({"identity": {"type": "None"}}));
        assert_eq!(r.ok().flatten(), Some((false, vec![])));
    }

    #[test]
    fn adds_and_removes_are_case_insensitive_deltas() {
        let i = inner();
        let c = vmss(false, &[ID_A]);
        let body = json!({"identity": {"type": "userassigned", "userAssignedIdentities": {
            ID_A.to_uppercase(): null,
        }}});
        // Removing the last one while keeping type UserAssigned is refused.
        let (status, code, _) = refused(i.evaluate_patch(&c, &body));
        assert_eq!((status, code), (400, "InvalidParameter"));
        let body = json!({"identity": {"type": "SystemAssigned,UserAssigned", "userAssignedIdentities": {
            ID_A.to_uppercase(): {},
        }}});
        assert_eq!(
            i.evaluate_patch(&c, &body).ok().flatten(),
            Some((true, vec![ID_A.to_string()]))
        );
    }

    #[test]
    fn unknown_and_unauthorized_identities_are_named_in_the_refusal() {
        let i = inner();
        let c = vmss(false, &[]);
        let gone = ID_A.replace("/a", "/gone");
        let body = json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {
            gone.clone(): {}, ID_B: {},
        }}});
        let (status, code, msg) = refused(i.evaluate_patch(&c, &body));
        assert_eq!((status, code), (400, "FailedIdentityOperation"));
        assert!(msg.contains(&gone) && !msg.contains(ID_B), "{msg}");
        let body =
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": { ID_B: {} }}});
        let (status, code, msg) = refused(i.evaluate_patch(&c, &body));
        assert_eq!((status, code), (403, "LinkedAuthorizationFailed"));
        assert!(msg.contains(ID_B));
    }

    #[test]
    fn faults_are_consumed_in_order_and_only_by_matching_requests() {
        let mut i = inner();
        i.faults.push_back(Fault {
            target: FaultTarget::ArmPatch,
            kind: FaultKind::Status(500),
            remaining: 2,
        });
        i.faults.push_back(Fault {
            target: FaultTarget::AnyArm,
            kind: FaultKind::Hang,
            remaining: 1,
        });
        assert_eq!(i.take_fault(FaultTarget::Imds), None);
        assert_eq!(i.take_fault(FaultTarget::ArmGet), Some(FaultKind::Hang));
        assert_eq!(i.take_fault(FaultTarget::ArmGet), None);
        assert_eq!(
            i.take_fault(FaultTarget::ArmPatch),
            Some(FaultKind::Status(500))
        );
        assert_eq!(
            i.take_fault(FaultTarget::ArmPatch),
            Some(FaultKind::Status(500))
        );
        assert_eq!(i.take_fault(FaultTarget::ArmPatch), None);
        assert_eq!(i.counters.faults, 3);
    }
}
