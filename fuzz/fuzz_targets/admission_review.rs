//! The input as an AdmissionReview body, answered by each webhook endpoint
//! (`/validate/targetapp`, `/mutate/targetapp`, `/validate/tenantquota`) exactly
//! as the HTTPS server does (`Admission::review`, no I/O).
//!
//! Invariants: every answer is a 200 AdmissionReview whose response carries the
//! request's uid, or a 400 with an error when (and only when) the body is not a
//! v1 review with a request (uid, kind, operation, userInfo when present; nothing
//! else is read, so depth elsewhere, the old object's included, does not matter;
//! a userInfo whose strings are not UTF-8 is a bad body); a refusal always says
//! why and never "internal error"; a defaulting patch is base64 JSONPatch that
//! applies to the object, writes exactly the defaults, and defaulting the patched
//! object changes nothing.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use kco::admission::Validator;
use kco::admission::access::UserInfo;
use kco::admission::cache::Caches;
use kco::admission::defaults::{self, Defaults};
use kco::admission::review::{Admission, Hook, MAX_REVIEW_BYTES};
use kco::admission::validate::MAX_OBJECT_DEPTH;
use kube_core::GroupVersionKind;
use kube_core::admission::Operation;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

static ADMISSION: LazyLock<Admission> = LazyLock::new(|| {
    let caches = Caches::default();
    caches.mark_synced();
    caches.put_account("chain", "kco-actions");
    caches.put_configmap(
        "chain",
        "schema",
        BTreeMap::from([(
            "sdl".to_owned(),
            "type Query { status: Status! peers: [String!]! }\n\
             type Status { height: Int! sync: Sync! }\n\
             enum Sync { SYNCED CATCHUP }"
                .to_owned(),
        )]),
    );
    Admission::new(
        Arc::new(Validator::new()),
        kco::tenancy::Tenants::new(kco::tenancy::Quota::default()),
        Defaults::default(),
        caches,
    )
});

/// What the webhooks read of a review; everything else is skipped unread.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    #[allow(dead_code)] // read to be required, as the webhooks require it
    kind: GroupVersionKind,
    #[allow(dead_code)]
    operation: Operation,
    #[allow(dead_code)]
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    object: Option<Box<RawValue>>,
    #[allow(dead_code)] // read: the webhooks check who may use an action account
    #[serde(default)]
    user_info: UserInfo,
}

impl Request {
    /// The object, when it is shallow enough to be decoded and defaulted.
    fn object(&self) -> Option<Value> {
        let raw = self.object.as_ref()?.get();
        if kco::nesting::depth(raw.as_bytes()) > MAX_OBJECT_DEPTH {
            return None;
        }
        serde_json::from_str(raw).ok()
    }
}

fn request(body: &[u8]) -> Option<Request> {
    if body.len() > MAX_REVIEW_BYTES {
        return None;
    }
    let review: Review = serde_json::from_slice(body).ok()?;
    if (review.api_version.as_str(), review.kind.as_str())
        != ("admission.k8s.io/v1", "AdmissionReview")
    {
        return None;
    }
    review.request
}

fn check(hook: Hook, body: &[u8], request: Option<&Request>) -> Value {
    let answer = ADMISSION.review(hook, body);
    let Some(request) = request else {
        assert_eq!(answer.status, 400, "{hook:?}: {}", answer.body);
        assert!(answer.body["error"].is_string(), "{}", answer.body);
        return Value::Null;
    };
    assert_eq!(answer.status, 200, "{hook:?}: {}", answer.body);
    let review = &answer.body;
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    let response = &review["response"];
    assert_eq!(
        response["uid"].as_str(),
        Some(request.uid.as_str()),
        "{review}"
    );
    let allowed = response["allowed"].as_bool().expect("allowed is a boolean");
    if !allowed {
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "a refusal says why: {review}");
        assert!(!message.contains("internal error"), "{review}");
        assert!(response.get("patch").is_none_or(Value::is_null), "{review}");
    }
    response.clone()
}

fuzz_target!(|body: &[u8]| {
    let request = request(body);
    check(Hook::Validate, body, request.as_ref());
    check(Hook::ValidateQuota, body, request.as_ref());
    let response = check(Hook::Mutate, body, request.as_ref());

    let Some(patch) = response.get("patch").and_then(Value::as_str) else {
        return;
    };
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is base64");
    let ops: json_patch::Patch = serde_json::from_slice(&bytes).expect("the patch is a JSON patch");
    assert!(!ops.0.is_empty(), "an empty patch is not sent");
    let Some(request) = request else {
        unreachable!("a patch answers a request");
    };
    let mut object = request.object().expect("a patched object was read");
    let mut expected = object["spec"].clone();
    defaults::apply(&mut expected, Defaults::default());
    json_patch::patch(&mut object, &ops).expect("the defaulting patch applies to the object");
    assert_eq!(
        object["spec"], expected,
        "the patch writes exactly the defaults"
    );
    assert!(
        defaults::patch(&object, Defaults::default()).0.is_empty(),
        "defaulting is idempotent: {object}"
    );

    // The defaulted object, reviewed again, needs no patch.
    // serde_json skips unknown fields without checking their strings' UTF-8, so a
    // decodable review is not always a JSON Value: then there is nothing to re-send.
    let Ok(mut again) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    again["request"]["object"] = object;
    let again = serde_json::to_vec(&again).expect("encodes");
    if let Some(request) = self::request(&again) {
        let response = check(Hook::Mutate, &again, Some(&request));
        assert!(
            response.get("patch").is_none_or(Value::is_null),
            "{response}"
        );
    }
});
