//! `/v1/identity/...`: certificates for workloads, bootstrap tokens, and
//! the trust bundle with its rotation.
//!
//! A certificate is issued for the identity the *credential* proves (the
//! TLS session's certificate for a renewal, the bootstrap token for a
//! first one), never for what the CSR asks. Tokens and root changes need
//! the admin token. The bundle is public: roots are not secrets.

use super::{ApiFailure, ApiResult, AppState, Caller, RevisionReply, BODY_LIMIT};
use crate::control::auth::{Auth, Refusal};
use crate::identity::ca::CaError;
use crate::identity::token::{DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL};
use crate::identity::{pem, rfc3339, SpiffeId, DEFAULT_NAMESPACE};
use crate::model::identity::{
    AddRoot, Certified, CertifyRequest, RootInfo, TokenIssued, TokenRequest, TrustBundle,
    MAX_CSR_BYTES,
};
use crate::model::FieldErrors;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::{Extension, Json};
use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use std::sync::Arc;
use std::time::Duration;

fn auth(st: &AppState) -> ApiResult<&Arc<Auth>> {
    st.auth
        .as_ref()
        .ok_or_else(|| ApiFailure::NotFound("identity is off on this control plane".into()))
}

/// A JSON body as `T`, every problem named.
fn json<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let body = body.map_err(|e| ApiFailure::body(e, BODY_LIMIT))?;
    serde_json::from_slice(&body).map_err(|e| {
        let field = e
            .to_string()
            .split('`')
            .nth(1)
            .unwrap_or("(body)")
            .to_string();
        ApiFailure::field(&field, e.to_string())
    })
}

pub(super) async fn certify(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Certified>> {
    let auth = auth(&st)?.clone();
    let id = caller.certifiable()?.clone();
    if id.trust_domain() != auth.ca.trust_domain() || id.is_control() {
        return Err(Refusal::Forbidden(format!("{id} cannot be issued here")).into());
    }
    let req: CertifyRequest = json(body)?;
    if req.csr.len() > MAX_CSR_BYTES {
        return Err(ApiFailure::field(
            "csr",
            format!("larger than {MAX_CSR_BYTES} bytes"),
        ));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(req.csr.as_bytes())
        .map_err(|e| ApiFailure::field("csr", format!("not a PEM CERTIFICATE REQUEST: {e}")))?;
    let ca = auth.ca.clone();
    let who = id.clone();
    let issued = tokio::task::spawn_blocking(move || ca.issue(der.as_ref(), &who))
        .await?
        .map_err(|e| match e {
            CaError::BadCsr(why) => ApiFailure::field("csr", why),
            other => ApiFailure::Internal(other.to_string()),
        })?;
    st.metrics.certificates_issued.inc();
    tracing::info!(identity = %id, expires_at = %rfc3339(issued.not_after), "certificate issued");
    Ok(Json(Certified {
        identity: id.to_string(),
        certificate: pem::encode_certs(&issued.chain),
        bundle: auth.ca.bundle().pem,
        expires_at: rfc3339(issued.not_after),
    }))
}

pub(super) async fn create_token(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<TokenIssued>> {
    caller.admin()?;
    let auth = auth(&st)?;
    let req: TokenRequest = json(body)?;
    let mut errs = FieldErrors::default();
    let namespace = req.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    if namespace == crate::identity::CONTROL_NAMESPACE {
        errs.push("namespace", "is reserved for mesh-control");
    }
    let ttl = req.ttl_secs.map_or(DEFAULT_TOKEN_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        errs.push(
            "ttl_secs",
            format!("must be between 1 and {} seconds", MAX_TOKEN_TTL.as_secs()),
        );
    }
    let id = match SpiffeId::new(auth.ca.trust_domain(), namespace, &req.service) {
        Ok(id) => Some(id),
        Err(e) => {
            let field = match validate_ns(namespace) {
                true => "service",
                false => "namespace",
            };
            errs.push(field, e.0);
            None
        }
    };
    let id = match id {
        Some(id) if errs.is_empty() => id,
        _ => return Err(ApiFailure::Invalid(errs)),
    };
    let (token, exp) = auth.tokens.mint(&id, ttl).map_err(ApiFailure::Internal)?;
    tracing::info!(identity = %id, expires_at = %rfc3339(exp), "bootstrap token created");
    Ok(Json(TokenIssued {
        token,
        identity: id.to_string(),
        expires_at: rfc3339(exp),
    }))
}

fn validate_ns(ns: &str) -> bool {
    crate::model::validate_service_name(ns).is_ok()
}

pub(super) async fn bundle(State(st): State<AppState>) -> ApiResult<Json<TrustBundle>> {
    Ok(Json(auth(&st)?.ca.bundle()))
}

pub(super) async fn add_root(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RootInfo>> {
    caller.admin()?;
    let auth = auth(&st)?.clone();
    let req: AddRoot = match body {
        Ok(b) if b.is_empty() => AddRoot::default(),
        other => json(other)?,
    };
    let supplied = match (&req.cert, &req.key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            return Err(ApiFailure::field(
                "key",
                "give both cert and key, or neither (mesh-control makes the root)",
            ))
        }
    };
    let ca = auth.ca.clone();
    let info = tokio::task::spawn_blocking(move || {
        ca.add_root(supplied.as_ref().map(|(c, k)| (c.as_str(), k.as_str())))
    })
    .await?
    .map_err(root_failure)?;
    publish(&st, &auth).await?;
    Ok(Json(info))
}

pub(super) async fn activate_root(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RootInfo>> {
    caller.admin()?;
    let auth = auth(&st)?.clone();
    let Path(id) = path.map_err(ApiFailure::path)?;
    let a = auth.clone();
    let info = tokio::task::spawn_blocking(move || {
        let info = a.ca.activate(&id).map_err(root_failure)?;
        a.refresh_own().map_err(ApiFailure::Internal)?;
        Ok::<_, ApiFailure>(info)
    })
    .await??;
    publish(&st, &auth).await?;
    Ok(Json(info))
}

pub(super) async fn remove_root(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RevisionReply>> {
    caller.admin()?;
    let auth = auth(&st)?.clone();
    let Path(id) = path.map_err(ApiFailure::path)?;
    let a = auth.clone();
    tokio::task::spawn_blocking(move || {
        a.ca.remove_root(&id).map_err(root_failure)?;
        a.refresh_own().map_err(ApiFailure::Internal)
    })
    .await??;
    let revision = publish(&st, &auth).await?;
    Ok(Json(RevisionReply { revision }))
}

/// Pushes the bundle to every proxy, in revision order with the rest.
async fn publish(st: &AppState, auth: &Auth) -> ApiResult<u64> {
    let bundle = auth.ca.bundle();
    let registry = st.registry.clone();
    Ok(tokio::task::spawn_blocking(move || registry.publish_bundle(bundle)).await??)
}

fn root_failure(e: CaError) -> ApiFailure {
    match e {
        CaError::UnknownRoot(_) => ApiFailure::NotFound(e.to_string()),
        CaError::BadRoot(why) => ApiFailure::field("cert", why),
        CaError::ActiveRoot(_) | CaError::NoKey(_) => ApiFailure::Conflict(e.to_string()),
        other => ApiFailure::Internal(other.to_string()),
    }
}
