//! The Docker token endpoint, `GET/POST /service/token`.
//!
//! - `GET` with `Basic` credentials or none (anonymous), `service=` and any number of
//!   `scope=`; `offline_token=true` adds a refresh token.
//! - `POST` (OAuth2 form, used by newer clients): `grant_type=password` with
//!   `username`/`password`, or `grant_type=refresh_token` with `refresh_token`.
//!
//! The token carries the requested scopes intersected with what the principal may do
//! (never an error for a denied scope, as Docker clients expect).

use std::net::IpAddr;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_auth::{Actions, Principal, ResourceType, Scope, grant, parse_scope_params, projects_in};
use berth_proto::error::ErrorCode;
use berth_storage::RefreshToken;
use serde_json::json;
use sha2::Digest as _;

use crate::auth::ClientAddr;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(crate) async fn get_token(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller = state.auth.caller(&headers, addr).await?;
        if caller.token.is_some() {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the token endpoint takes Basic credentials or none, not a bearer token",
            ));
        }
        let offline = param(&params, "offline_token") == Some("true");
        let scopes = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str());
        issue(
            &state,
            &caller.principal,
            &params,
            scopes,
            offline,
            None,
            addr,
        )
        .await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn post_token(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    body: String,
) -> Response {
    let result = async {
        let params: Vec<(String, String)> = serde_urlencoded_pairs(&body)?;
        let grant_type = param(&params, "grant_type").unwrap_or("");
        let (principal, refresh) = match grant_type {
            "password" => {
                let user = param(&params, "username").unwrap_or("");
                let pass = param(&params, "password").unwrap_or("");
                (state.auth.login(user, pass, addr).await?, None)
            }
            "refresh_token" => {
                let token = param(&params, "refresh_token").unwrap_or("");
                (refresh_principal(&state, token).await?, Some(token.to_string()))
            }
            other => {
                return Err(ApiError::new(
                    ErrorCode::Unsupported,
                    format!("grant_type {other:?} is not supported; use \"password\" or \"refresh_token\""),
                )
                .with_status(StatusCode::BAD_REQUEST));
            }
        };
        let scopes = params.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.as_str());
        let offline = grant_type == "password" || param(&params, "access_type") == Some("offline");
        issue(&state, &principal, &params, scopes, offline, refresh, addr).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn serde_urlencoded_pairs(body: &str) -> ApiResult<Vec<(String, String)>> {
    if body.len() > 64 * 1024 {
        return Err(ApiError::new(
            ErrorCode::SizeInvalid,
            "token request body over 64 KiB",
        ));
    }
    Query::<Vec<(String, String)>>::try_from_uri(&format!("/?{body}").parse().map_err(|_| {
        ApiError::new(
            ErrorCode::Unsupported,
            "token request body is not a URL-encoded form",
        )
        .with_status(StatusCode::BAD_REQUEST)
    })?)
    .map(|q| q.0)
    .map_err(|e| {
        ApiError::new(ErrorCode::Unsupported, format!("token request form: {e}"))
            .with_status(StatusCode::BAD_REQUEST)
    })
}

fn refresh_key(id: &str) -> String {
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

async fn refresh_principal(state: &AppState, token: &str) -> ApiResult<Principal> {
    let refused = |why: String| {
        ApiError::new(
            ErrorCode::Unauthorized,
            format!("refresh token refused: {why}; log in again"),
        )
    };
    let verified = state
        .auth
        .tokens
        .verify_refresh(token)
        .map_err(|e| refused(e.to_string()))?;
    let stored = state
        .auth
        .accounts
        .refresh_token(&refresh_key(&verified.id))
        .await?;
    match stored {
        Some(t) if t.subject == verified.subject && t.expires_at > verified.issued_at as i64 => {}
        _ => {
            return Err(refused(
                "it was revoked (password change, logout or account removal)".into(),
            ));
        }
    }
    let p = state.auth.caller_principal(&verified.subject).await?;
    Ok(p)
}

async fn issue<'a>(
    state: &AppState,
    principal: &Principal,
    params: &[(String, String)],
    scopes: impl Iterator<Item = &'a str>,
    offline: bool,
    existing_refresh: Option<String>,
    addr: IpAddr,
) -> ApiResult<Response> {
    let auth = &state.auth;
    if let Some(service) = param(params, "service")
        && service != auth.service()
    {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            format!(
                "service {service:?} is not this registry's service {:?}",
                auth.service()
            ),
        )
        .with_status(StatusCode::BAD_REQUEST));
    }
    let requested = parse_scope_params(scopes).map_err(|e| {
        ApiError::new(ErrorCode::Unsupported, format!("invalid scope: {e}"))
            .with_status(StatusCode::BAD_REQUEST)
    })?;
    let projects = projects_in(&requested);
    let lookup = auth.lookup(principal, &projects).await?;
    let mut granted = grant(principal, &requested, &lookup);
    // Requested repositories that were not granted stay in the token with no actions, so
    // that the registry answers 403 (asked, refused) rather than 401 (ask for a token).
    for asked in requested
        .iter()
        .filter(|s| s.resource_type == ResourceType::Repository)
    {
        if !granted.iter().any(|g| g.same_resource(asked)) {
            granted.push(Scope {
                actions: Actions::NONE,
                ..asked.clone()
            });
        }
    }
    let token = auth
        .tokens
        .issue(principal.subject(), &granted)
        .map_err(|e| {
            ApiError::new(ErrorCode::Unsupported, e.to_string())
                .with_status(StatusCode::INTERNAL_SERVER_ERROR)
        })?;

    let mut body = json!({
        "token": token.token,
        "access_token": token.token,
        "expires_in": token.expires_in,
        "issued_at": rfc3339(token.issued_at),
    });
    if !principal.is_anonymous() && offline {
        let refresh = match existing_refresh {
            Some(r) => r,
            None => {
                let r = auth
                    .tokens
                    .issue_refresh(principal.subject())
                    .map_err(|e| {
                        ApiError::new(ErrorCode::Unsupported, e.to_string())
                            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
                    })?;
                auth.accounts
                    .put_refresh_token(&RefreshToken {
                        id_hash: refresh_key(&r.id),
                        subject: principal.subject().to_string(),
                        expires_at: (r.issued_at + r.expires_in) as i64,
                    })
                    .await?;
                r.token
            }
        };
        body["refresh_token"] = json!(refresh);
    }
    if !principal.is_anonymous() {
        let detail = berth_auth::format_scopes(&granted);
        auth.audit(
            principal.subject(),
            "login",
            principal.subject(),
            addr,
            &detail,
        )
        .await;
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response())
}

/// Unix seconds as RFC 3339 UTC (`2026-11-26T23:00:00Z`).
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_798_326_000), "2026-12-26T23:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
