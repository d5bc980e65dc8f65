//! ARM client against the Azure simulator over real HTTP on loopback: identity GET/PATCH,
//! type transitions, long-running operations, refusals, the 150-identity split, throttling,
//! retries, and the simulator's handling of bad input.

mod azure_common;

use std::time::Duration;

use aad_pod_identity::cloud::Error;
use aad_pod_identity::cloud::arm::ArmOptions;
use aad_pod_identity_sim::azure::{AzureSimConfig, FaultKind, FaultTarget, Latency, LroMode};
use aad_pod_identity_sim::topology::Topology;
use azure_common::*;
use azure_core::http::Method;

#[tokio::test]
async fn adds_and_removes_move_the_identity_type_through_none_and_user_assigned() {
    let t = Topology::sized(1, 2, 0, 3);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    let target = vmss(&t, 0);

    let state = arm.get_identities(&target).await.unwrap();
    assert_eq!(state.identity_type, "None");
    assert!(state.user_assigned.is_empty());

    let (a, b) = (identity_id(&t, 0), identity_id(&t, 1));
    let out = arm
        .update_identities(&target, &[a.clone(), b.clone()], &[])
        .await
        .unwrap();
    assert_eq!(out.added, vec![a.clone(), b.clone()]);
    assert_eq!(out.patches, 1);
    let state = arm.get_identities(&target).await.unwrap();
    assert_eq!(state.identity_type, "UserAssigned");
    assert!(state.contains(&a) && state.contains(&b));

    // Adding what is there and removing what is not sends nothing.
    let before = sim.counters().total_patches();
    let out = arm
        .update_identities(&target, std::slice::from_ref(&a), &[identity_id(&t, 2)])
        .await
        .unwrap();
    assert_eq!(out.patches, 0);
    assert_eq!(out.unchanged.len(), 2);
    assert_eq!(sim.counters().total_patches(), before);

    arm.update_identities(&target, &[], std::slice::from_ref(&a))
        .await
        .unwrap();
    assert_eq!(
        sim.assigned_identities(&t.scale_sets[0].name).unwrap(),
        vec![b.clone()]
    );
    // Removing the last one moves the type to None.
    let out = arm
        .update_identities(&target, &[], std::slice::from_ref(&b))
        .await
        .unwrap();
    assert_eq!(out.removed, vec![b]);
    assert_eq!(out.state.identity_type, "None");
    assert_eq!(
        arm.get_identities(&target).await.unwrap().identity_type,
        "None"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_system_assigned_identity_is_kept_through_user_assigned_changes() {
    let t = Topology::sized(0, 0, 1, 2);
    let sim = sim(
        &t,
        AzureSimConfig {
            system_assigned: true,
            lro: LroMode::Sync,
            ..Default::default()
        },
    )
    .await;
    let arm = arm_client(&sim, fast_options());
    let vm = aad_pod_identity::cloud::provider_id::ComputeRef::vm(
        &t.subscription_id,
        &t.resource_group,
        &t.vms[0],
    );
    let a = identity_id(&t, 0);
    let out = arm
        .update_identities(&vm, std::slice::from_ref(&a), &[])
        .await
        .unwrap();
    assert_eq!(out.state.identity_type, "SystemAssigned, UserAssigned");
    let out = arm.update_identities(&vm, &[], &[a]).await.unwrap();
    assert_eq!(out.state.identity_type, "SystemAssigned");
    assert_eq!(
        arm.get_identities(&vm).await.unwrap().identity_type,
        "SystemAssigned"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn long_running_operations_are_followed_through_async_operation_and_location() {
    let t = Topology::sized(2, 1, 0, 2);
    let sim = sim(
        &t,
        AzureSimConfig {
            lro: LroMode::AsyncOperation,
            arm_latency: Latency::Fixed(Duration::from_millis(200)),
            lro_retry_after: Some(Duration::from_millis(20)),
            ..Default::default()
        },
    )
    .await;
    let arm = arm_client(&sim, fast_options());
    let started = std::time::Instant::now();
    let out = arm
        .update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap();
    assert_eq!(out.added.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // InProgress answers until the write's time has passed, then Succeeded.
    assert!(sim.counters().lro_polls >= 2, "{:?}", sim.counters());
    assert_eq!(
        arm.get_identities(&vmss(&t, 0))
            .await
            .unwrap()
            .provisioning_state,
        "Succeeded"
    );

    sim.reconfigure(|c| c.lro = LroMode::Location);
    sim.reset_counters();
    let started = std::time::Instant::now();
    let out = arm
        .update_identities(&vmss(&t, 1), &[identity_id(&t, 1)], &[])
        .await
        .unwrap();
    assert_eq!(out.added.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(sim.counters().lro_polls >= 2, "{:?}", sim.counters());
    assert_eq!(
        sim.assigned_identities(&t.scale_sets[1].name)
            .unwrap()
            .len(),
        1
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn an_operation_ends_at_its_time_however_often_it_is_polled() {
    let t = Topology::sized(3, 1, 0, 3);
    let latency = Duration::from_millis(300);
    let sim = sim(
        &t,
        AzureSimConfig {
            arm_latency: Latency::Fixed(latency),
            ..Default::default()
        },
    )
    .await;
    let arm = arm_client(&sim, fast_options());
    // Polled often (every 10 ms) or rarely (every 250 ms), the write takes its latency; the
    // count of polls changes, the outcome and its time do not (polls are quick requests).
    let mut polls = Vec::new();
    for (i, every) in [(0, 10), (1, 250)] {
        sim.reconfigure(|c| c.lro_retry_after = Some(Duration::from_millis(every)));
        sim.reset_counters();
        let started = std::time::Instant::now();
        arm.update_identities(&vmss(&t, i), &[identity_id(&t, i)], &[])
            .await
            .unwrap();
        assert!(started.elapsed() >= latency, "poll every {every} ms");
        polls.push(sim.counters().lro_polls);
    }
    assert!(polls[0] > polls[1], "{polls:?}");
    assert_eq!(polls[1], 2, "polled at 250 ms (running) and 500 ms (done)");

    // Never polled: the operation still ends at its time, and a read shows it.
    let token = arm_token(&sim).await;
    let url = format!(
        "{}{}?api-version=2024-07-01",
        sim.arm_endpoint().trim_end_matches('/'),
        vmss(&t, 2).resource_path()
    );
    let body = serde_json::json!({
        "identity": { "type": "UserAssigned", "userAssignedIdentities": { identity_id(&t, 2): {} } }
    });
    let auth = [
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".to_string()),
    ];
    let answer = raw(
        Method::Patch,
        &url,
        &auth,
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body["properties"]["provisioningState"], "Updating",
        "{}",
        answer.text
    );
    let state = arm.get_identities(&vmss(&t, 2)).await.unwrap();
    assert_eq!(state.provisioning_state, "Updating");
    tokio::time::sleep(latency).await;
    let state = arm.get_identities(&vmss(&t, 2)).await.unwrap();
    assert_eq!(state.provisioning_state, "Succeeded");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_client_waits_what_the_operation_announces_and_its_own_interval_without_a_hint() {
    let t = Topology::sized(2, 1, 0, 2);
    let sim = sim(&t, AzureSimConfig::default()).await;
    // Announced: 300 ms in `retry-after-ms` (the write itself is instant).
    sim.reconfigure(|c| c.lro_retry_after = Some(Duration::from_millis(300)));
    let arm = arm_client(
        &sim,
        ArmOptions {
            lro_poll_interval: Duration::from_millis(10),
            ..fast_options()
        },
    );
    let started = std::time::Instant::now();
    arm.update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(sim.counters().lro_polls, 1);
    // No hint (what Microsoft.Compute sends): the client's own interval.
    sim.reconfigure(|c| c.lro_retry_after = None);
    sim.reset_counters();
    let arm = arm_client(
        &sim,
        ArmOptions {
            lro_poll_interval: Duration::from_millis(400),
            ..fast_options()
        },
    );
    let started = std::time::Instant::now();
    arm.update_identities(&vmss(&t, 1), &[identity_id(&t, 1)], &[])
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(sim.counters().lro_polls, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_failed_long_running_operation_is_an_error_and_changes_nothing() {
    let t = Topology::sized(1, 1, 0, 2);
    for lro in [LroMode::AsyncOperation, LroMode::Location] {
        let sim = sim(
            &t,
            AzureSimConfig {
                lro,
                ..Default::default()
            },
        )
        .await;
        let arm = arm_client(&sim, fast_options());
        sim.inject(
            FaultTarget::ArmPatch,
            1,
            FaultKind::LroFailure {
                code: "InternalExecutionError".into(),
                message: "An internal execution error occurred.".into(),
            },
        );
        let err = arm
            .update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::OperationFailed { code, .. } if code == "InternalExecutionError"),
            "{lro:?}: {err:?}"
        );
        assert!(
            sim.assigned_identities(&t.scale_sets[0].name)
                .unwrap()
                .is_empty()
        );
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn one_refused_identity_does_not_block_the_rest_of_the_batch() {
    let t = Topology::sized(1, 1, 0, 4);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    let target = vmss(&t, 0);
    let unknown = t
        .identity_resource_id(&t.identities[3])
        .replace("identity-3", "deleted-identity");
    let unauthorized = identity_id(&t, 2);
    sim.set_identity_assignable(&unauthorized, false).unwrap();
    let good = vec![identity_id(&t, 0), identity_id(&t, 1)];

    let mut add = good.clone();
    add.insert(1, unknown.clone());
    add.push(unauthorized.clone());
    let out = arm.update_identities(&target, &add, &[]).await.unwrap();

    assert_eq!(out.added, good);
    let mut refused: Vec<(String, String)> = out
        .refused
        .iter()
        .map(|r| (r.id.clone(), r.code.clone()))
        .collect();
    refused.sort();
    let mut expected = vec![
        (unknown.clone(), "FailedIdentityOperation".to_string()),
        (
            unauthorized.clone(),
            "LinkedAuthorizationFailed".to_string(),
        ),
    ];
    expected.sort();
    assert_eq!(refused, expected);
    // First PATCH refused for the unknown id, second for the unauthorized one, third applied.
    assert_eq!(out.patches, 3);
    let assigned = sim.assigned_identities(&t.scale_sets[0].name).unwrap();
    assert_eq!(assigned, good);
    sim.shutdown().await;
}

#[tokio::test]
async fn more_than_150_identities_are_split_into_patches_of_at_most_150() {
    let t = Topology::sized(1, 1, 0, 320);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    let target = vmss(&t, 0);
    let all: Vec<String> = (0..320).map(|i| identity_id(&t, i)).collect();
    let out = arm.update_identities(&target, &all, &[]).await.unwrap();
    assert_eq!(out.patches, 3);
    assert_eq!(out.added.len(), 320);
    assert_eq!(sim.counters().total_patches(), 3);
    // Each identity was named by exactly one PATCH; identities of no PATCH by none.
    let c = sim.counters();
    assert!(all.iter().all(|id| c.writes_naming(id) == 1));
    assert_eq!(c.writes_naming(&all[0].to_uppercase()), 1);
    assert_eq!(c.writes_naming("/subscriptions/x/nothing"), 0);
    assert_eq!(
        sim.assigned_identities(&t.scale_sets[0].name)
            .unwrap()
            .len(),
        320
    );

    // Removing 200 and adding none: two PATCHes, never an empty UserAssigned map.
    let out = arm
        .update_identities(&target, &[], &all[..200])
        .await
        .unwrap();
    assert_eq!(out.patches, 2);
    assert_eq!(
        sim.assigned_identities(&t.scale_sets[0].name)
            .unwrap()
            .len(),
        120
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_429_storm_never_sees_a_request_inside_a_retry_after_window() {
    // Six scale sets in one subscription; ARM allows 2 writes per 2 s window.
    let t = Topology::sized(6, 1, 0, 6);
    let sim = sim(
        &t,
        AzureSimConfig {
            write_budget: Some((2, Duration::from_secs(2))),
            lro: LroMode::Sync,
            // Requests already in flight when a 429 leaves may arrive a little later on a
            // loaded machine; only arrivals after this grace count as violations.
            throttle_grace: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await;
    let arm = arm_client(&sim, fast_options());
    // An extra injected 429 with an HTTP-date Retry-After on top of the budget.
    sim.inject(
        FaultTarget::ArmGet,
        1,
        FaultKind::Throttle {
            retry_after_secs: 1,
            as_http_date: true,
        },
    );
    let mut tasks = Vec::new();
    for i in 0..6 {
        let arm = arm.clone();
        let target = vmss(&t, i);
        let id = identity_id(&t, i);
        tasks.push(tokio::spawn(async move {
            arm.update_identities(&target, &[id], &[]).await
        }));
    }
    for task in tasks {
        let out = task
            .await
            .unwrap()
            .expect("every caller gets through eventually");
        assert_eq!(out.added.len(), 1);
    }
    let c = sim.counters();
    eprintln!(
        "storm: {} PATCHes, {} throttled, {} violations",
        c.total_patches(),
        c.throttled,
        c.throttle_violations
    );
    assert!(c.throttled >= 2, "the storm really throttled: {c:?}");
    assert_eq!(c.throttle_violations, 0, "{c:?}");
    // Cross-check with the request log: after each 429 (plus the in-flight grace), nothing
    // for the subscription arrives before its window ends.
    let log = sim.request_log();
    for (i, r) in log.iter().enumerate().filter(|(_, r)| r.status == 429) {
        let window_end = r.at + Duration::from_secs(1);
        let grace_end = r.at + Duration::from_millis(500);
        for later in &log[i + 1..] {
            assert!(
                later.subscription.is_none() || later.at <= grace_end || later.at >= window_end,
                "request {} {} arrived {:?} after a 429",
                later.method,
                later.path,
                later.at - r.at
            );
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn the_violation_counter_catches_a_client_that_ignores_retry_after() {
    // Guards the storm test: the simulator does notice requests inside a window.
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let token = arm_token(&sim).await;
    sim.inject(
        FaultTarget::ArmGet,
        1,
        FaultKind::Throttle {
            retry_after_secs: 5,
            as_http_date: false,
        },
    );
    let url = format!(
        "{}{}?api-version=2024-07-01",
        sim.arm_endpoint().trim_end_matches('/'),
        vmss(&t, 0).resource_path()
    );
    let auth = [("authorization", format!("Bearer {token}"))];
    assert_eq!(raw(Method::Get, &url, &auth, None).await.status, 429);
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw(Method::Get, &url, &auth, None).await;
    assert_eq!(sim.counters().throttle_violations, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn server_errors_and_hung_requests_are_retried_with_backoff() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let (arm, calls) = observed_arm_client(&sim, fast_options());
    sim.inject(FaultTarget::ArmGet, 1, FaultKind::Hang);
    sim.inject(FaultTarget::ArmPatch, 2, FaultKind::Status(503));
    let out = arm
        .update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap();
    assert_eq!(out.added.len(), 1);
    let ops: Vec<(&str, Option<u16>)> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.operation, c.status))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("vmss_get", None),
            ("vmss_get", Some(200)),
            ("vmss_update", Some(503)),
            ("vmss_update", Some(503)),
            ("vmss_update", Some(200)),
            // Default simulator write: instant, so the first poll finds it Succeeded.
            ("lro_poll", Some(200)),
        ]
    );

    // A slow answer shows up in the reported call time; a write's latency in the write's.
    sim.inject(
        FaultTarget::ArmGet,
        1,
        FaultKind::Slow(Duration::from_millis(300)),
    );
    arm.get_identities(&vmss(&t, 0)).await.unwrap();
    {
        let calls = calls.lock().unwrap();
        let last = calls.last().unwrap();
        assert!(last.elapsed >= Duration::from_millis(300), "{last:?}");
    }
    sim.reconfigure(|c| {
        c.arm_latency = Latency::Uniform {
            min: Duration::from_millis(100),
            max: Duration::from_millis(150),
        }
    });
    let started = std::time::Instant::now();
    arm.update_identities(&vmss(&t, 0), &[], &[identity_id(&t, 0)])
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    sim.reconfigure(|c| c.arm_latency = Latency::None);

    // Beyond max_attempts the error surfaces, typed.
    sim.inject(FaultTarget::ArmGet, 4, FaultKind::Status(500));
    let err = arm.get_identities(&vmss(&t, 0)).await.unwrap_err();
    assert!(matches!(err, Error::Arm { status: 500, .. }), "{err:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_scale_set_being_deleted_is_never_patched() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    sim.set_provisioning_state(&t.scale_sets[0].name, "Deleting")
        .unwrap();
    let err = arm
        .update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Deleting { .. }), "{err:?}");
    assert_eq!(sim.counters().total_patches(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_missing_scale_set_is_a_not_found_error() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    let ghost = aad_pod_identity::cloud::provider_id::ComputeRef::scale_set(
        &t.subscription_id,
        &t.resource_group,
        "no-such-vmss",
    );
    let err = arm.get_identities(&ghost).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { code, .. } if code == "ResourceNotFound"),
        "{err:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_arm_errors_and_leaves_state_unchanged() {
    let t = Topology::sized(1, 1, 0, 2);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    arm.update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap();
    let before = arm.get_identities(&vmss(&t, 0)).await.unwrap();
    let token = arm_token(&sim).await;
    let url = format!(
        "{}{}?api-version=2024-07-01",
        sim.arm_endpoint().trim_end_matches('/'),
        vmss(&t, 0).resource_path()
    );
    let headers = [
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".to_string()),
    ];
    let id1 = identity_id(&t, 1);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "InvalidRequestContent"),
        (b"[1,2,3]".to_vec(), 400, "InvalidRequestContent"),
        (br#"{"identity":"UserAssigned"}"#.to_vec(), 400, "InvalidRequestContent"),
        (br#"{"identity":{"type":5}}"#.to_vec(), 400, "InvalidRequestContent"),
        (
            format!(r#"{{"identity":{{"type":"UserAssigned","userAssignedIdentities":{{"{id1}":true}}}}}}"#).into_bytes(),
            400,
            "InvalidRequestContent",
        ),
        (
            format!(r#"{{"identity":{{"type":"Bogus","userAssignedIdentities":{{"{id1}":{{}}}}}}}}"#).into_bytes(),
            400,
            "InvalidParameter",
        ),
        (
            format!(r#"{{"identity":{{"type":"None","userAssignedIdentities":{{"{id1}":{{}}}}}}}}"#).into_bytes(),
            400,
            "InvalidParameter",
        ),
        (
            format!(r#"{{"identity":{{"userAssignedIdentities":{{"{id1}":{{}}}}}}}}"#).into_bytes(),
            400,
            "InvalidParameter",
        ),
        (
            format!(r#"{{"identity":{{"type":"UserAssigned","userAssignedIdentities":{{"{}":null}}}}}}"#, identity_id(&t, 0)).into_bytes(),
            400,
            "InvalidParameter",
        ),
        (vec![b' '; 2 << 20], 413, "RequestContentTooLarge"),
    ];
    for (body, status, code) in cases {
        let r = raw(Method::Patch, &url, &headers, Some(body)).await;
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.body["error"]["code"], code, "{}", r.text);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(arm.get_identities(&vmss(&t, 0)).await.unwrap(), before);

    // Without a token from the simulated Azure AD, ARM answers 401 in its error format.
    let r = raw(Method::Get, &url, &[], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "InvalidAuthenticationToken");
    let r = raw(
        Method::Get,
        &url,
        &[("authorization", "Bearer forged.token.x".into())],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_patch_whose_answer_is_lost_is_applied_though_the_client_never_hears_so() {
    let t = Topology::sized(1, 1, 0, 2);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let (arm, calls) = observed_arm_client(
        &sim,
        ArmOptions {
            max_attempts: 1,
            ..fast_options()
        },
    );
    sim.inject(FaultTarget::ArmPatch, 1, FaultKind::AnswerLost);
    let result = arm
        .update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await;
    // The client saw its connection end without an answer (a transport error, no status) ...
    assert!(result.is_err(), "{result:?}");
    let updates: Vec<Option<u16>> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.operation == "vmss_update")
        .map(|c| c.status)
        .collect();
    assert_eq!(updates, vec![None]);
    // ... yet the change was stored: a fresh read shows the identity on the scale set.
    let state = arm.get_identities(&vmss(&t, 0)).await.unwrap();
    assert!(
        state
            .user_assigned
            .iter()
            .any(|id| id.eq_ignore_ascii_case(&identity_id(&t, 0))),
        "{state:?}"
    );
    assert_eq!(sim.counters().patches_applied, 1);
    let lost: Vec<u16> = sim
        .request_log()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.status)
        .collect();
    assert_eq!(lost, vec![0], "the log says the answer never went out");
    sim.shutdown().await;
}

#[tokio::test]
async fn server_error_bursts_carry_the_codes_arm_answers_with() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    for (status, code) in [
        (500, "InternalServerError"),
        (502, "BadGateway"),
        (503, "ServiceUnavailable"),
        (504, "GatewayTimeout"),
    ] {
        // A burst longer than the client's attempts: the error surfaces, typed.
        sim.inject(FaultTarget::ArmGet, 4, FaultKind::Status(status));
        let err = arm.get_identities(&vmss(&t, 0)).await.unwrap_err();
        match err {
            Error::Arm {
                status: s, code: c, ..
            } => assert_eq!((s, c.as_str()), (status, code)),
            other => panic!("{other:?}"),
        }
    }
    // After the burst, the next call goes through.
    arm.get_identities(&vmss(&t, 0)).await.unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn the_retry_of_a_patch_whose_answer_was_lost_is_refused_by_its_precondition() {
    let t = Topology::sized(1, 1, 0, 2);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let (arm, calls) = observed_arm_client(&sim, fast_options());
    sim.inject(FaultTarget::ArmPatch, 1, FaultKind::AnswerLost);
    let out = arm
        .update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap();
    let ops: Vec<(&str, Option<u16>)> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.operation, c.status))
        .collect();
    // The retry names the etag the lost PATCH already moved past: 412, read again.
    assert_eq!(
        ops,
        vec![
            ("vmss_get", Some(200)),
            ("vmss_update", None),
            ("vmss_update", Some(412)),
            ("vmss_get", Some(200)),
        ]
    );
    assert_eq!(sim.counters().patches_applied, 1, "nothing written twice");
    // The client cannot tell its own lost write from someone else's: the identity comes back
    // as found already there (what MIC must treat as "maybe ours", issue 15).
    assert!(out.added.is_empty());
    assert_eq!(out.unchanged.len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_write_on_the_last_answer_needs_no_read_whatever_the_operation_style() {
    for lro in [LroMode::Sync, LroMode::AsyncOperation, LroMode::Location] {
        let t = Topology::sized(1, 1, 0, 3);
        let sim = sim(
            &t,
            AzureSimConfig {
                lro,
                ..AzureSimConfig::default()
            },
        )
        .await;
        let arm = arm_client(&sim, fast_options());
        let target = vmss(&t, 0);
        let first = arm.get_identities(&target).await.unwrap();
        let gets = sim.counters().gets.values().sum::<u64>();
        let out = arm
            .update_identities_from(&target, Some(first), &[identity_id(&t, 0)], &[])
            .await
            .unwrap();
        // The answer names the version the write produced, so it can carry the next write.
        assert!(out.state.etag.is_some(), "{lro:?}: {:?}", out.state);
        let out = arm
            .update_identities_from(&target, Some(out.state), &[identity_id(&t, 1)], &[])
            .await
            .unwrap();
        assert_eq!(out.added, vec![identity_id(&t, 1)], "{lro:?}");
        assert_eq!(
            sim.counters().gets.values().sum::<u64>(),
            gets,
            "{lro:?}: two writes on known states read nothing"
        );
        assert_eq!(sim.counters().total_patches(), 2, "{lro:?}");
        assert_eq!(
            sim.assigned_identities(&t.scale_sets[0].name)
                .unwrap()
                .len(),
            2
        );
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn a_write_on_a_stale_answer_is_refused_by_its_precondition_then_read_and_redone() {
    let t = Topology::sized(1, 1, 0, 3);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    let target = vmss(&t, 0);
    let stale = arm.get_identities(&target).await.unwrap();
    // Someone else adds identity 1 in between.
    arm.update_identities(&target, &[identity_id(&t, 1)], &[])
        .await
        .unwrap();
    let gets = sim.counters().gets.values().sum::<u64>();
    let out = arm
        .update_identities_from(
            &target,
            Some(stale),
            &[identity_id(&t, 0), identity_id(&t, 1)],
            &[],
        )
        .await
        .unwrap();
    // Judged against the state the write really applied to: 1 was someone else's.
    assert_eq!(out.added, vec![identity_id(&t, 0)]);
    assert_eq!(out.unchanged, vec![identity_id(&t, 1)]);
    assert_eq!(sim.counters().gets.values().sum::<u64>(), gets + 1);
    sim.shutdown().await;
}

/// MIC's port and write budget built as `mic::run` builds them, on one Retry-After gate.
fn mic_port_and_budget(
    sim: &aad_pod_identity_sim::azure::AzureSimHandle,
) -> (
    std::sync::Arc<dyn aad_pod_identity::actors::mic::port::ArmPort>,
    std::sync::Arc<aad_pod_identity::actors::mic::budget::WriteBudget>,
) {
    use aad_pod_identity::actors::mic::budget::WriteBudget;
    use aad_pod_identity::actors::mic::cloud_port::CloudArm;
    use aad_pod_identity::actors::mic::port::ArmPort;
    let config =
        aad_pod_identity::cloud::config::CloudConfig::from_json(&sim.azure_json().to_string())
            .expect("azure.json parses");
    let port = CloudArm::from_config(&config).expect("client");
    let gate = port.throttle_gate().expect("the ARM port has a gate");
    (std::sync::Arc::new(port), WriteBudget::sharing(0, gate))
}

#[tokio::test]
async fn a_retry_after_on_a_read_holds_the_next_write_and_one_on_a_write_holds_reads() {
    use aad_pod_identity::actors::mic::host::{HostId, IdentityId};
    use std::time::Instant;
    let t = Topology::sized(2, 1, 0, 1);
    let sim = sim(
        &t,
        AzureSimConfig {
            lro: LroMode::Sync,
            ..Default::default()
        },
    )
    .await;
    let (port, budget) = mic_port_and_budget(&sim);
    let sub = t.subscription_id.clone();
    let host = |i: usize| HostId::scale_set(&sub, &t.resource_group, &t.scale_sets[i].name);
    let window = Duration::from_secs(2);

    // A read of scale set 0 is throttled; the client waits out the window and reads again.
    sim.inject(
        FaultTarget::ArmGet,
        1,
        FaultKind::Throttle {
            retry_after_secs: window.as_secs(),
            as_http_date: false,
        },
    );
    let reader = {
        let (port, host) = (port.clone(), host(0));
        tokio::spawn(async move { port.get(&host).await })
    };
    let throttled_at = loop {
        if let Some(r) = sim.request_log().iter().find(|r| r.status == 429) {
            break r.at;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Meanwhile an assigner of scale set 1 (same subscription) asks the budget for a write.
    budget.acquire(&sub).await;
    let allowed_at = Instant::now();
    assert!(
        allowed_at >= throttled_at + window,
        "the write budget let a PATCH go {:?} after a 429 announcing {window:?}",
        allowed_at - throttled_at
    );
    let base = port.get(&host(1)).await.expect("read");
    port.patch(
        &host(1),
        &base,
        &[IdentityId::new(&identity_id(&t, 0))],
        &[],
    )
    .await
    .expect("the write goes through once the window has passed");
    reader
        .await
        .unwrap()
        .expect("the throttled read succeeds on its retry");
    let log = sim.request_log();
    let patch = log
        .iter()
        .find(|r| r.method == "PATCH")
        .expect("one PATCH sent");
    assert!(patch.at >= throttled_at + window, "{patch:?}");

    // The other way: a Retry-After an assigner reports to the budget holds the client's reads.
    let reported_at = Instant::now();
    budget.block_until(&sub, tokio::time::Instant::now() + window);
    port.get(&host(0)).await.expect("read");
    let read = sim
        .request_log()
        .into_iter()
        .rfind(|r| r.method == "GET")
        .expect("the read arrived");
    assert!(
        read.at >= reported_at + window,
        "a read went out {:?} into the window",
        read.at - reported_at
    );
    assert_eq!(sim.counters().throttle_violations, 0);
    sim.shutdown().await;
}
