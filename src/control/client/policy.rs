//! The `/v1/policies`, `/v1/authorizations` and `/v1/routes` calls:
//! apply, read, list and delete service and authorization policies and
//! gateway routes.

use super::{json_body, segment, ClientError, ControlClient};
use crate::control::api::RevisionReply;
use crate::model::{AuthorizationPolicy, Route, ServicePolicy};
use http::Method;

// === impl ControlClient ===

impl ControlClient {
    /// Applies (creates or replaces) `policy` for its service; returns the
    /// revision it took effect at. The server validates it again and names
    /// every bad field in a 400.
    pub async fn apply_policy(&self, policy: &ServicePolicy) -> Result<u64, ClientError> {
        let path = format!("/v1/policies/{}", segment(&policy.service));
        let reply: RevisionReply = self
            .call(Method::PUT, path, Some(json_body(policy)?))
            .await?;
        Ok(reply.revision)
    }

    /// The policy applied for `service`; `UnknownPolicy` when there is none.
    pub async fn policy(&self, service: &str) -> Result<ServicePolicy, ClientError> {
        let path = format!("/v1/policies/{}", segment(service));
        self.call(Method::GET, path, None)
            .await
            .map_err(|e| not_found(e, service))
    }

    /// Every applied policy, sorted by service.
    pub async fn policies(&self) -> Result<Vec<ServicePolicy>, ClientError> {
        self.call(Method::GET, "/v1/policies".into(), None).await
    }

    /// Deletes `service`'s policy (it runs the defaults again); returns the
    /// revision. `UnknownPolicy` when there was none.
    pub async fn delete_policy(&self, service: &str) -> Result<u64, ClientError> {
        let path = format!("/v1/policies/{}", segment(service));
        let reply: RevisionReply = self
            .call(Method::DELETE, path, None)
            .await
            .map_err(|e| not_found(e, service))?;
        Ok(reply.revision)
    }
}

impl ControlClient {
    /// Applies an AuthorizationPolicy (`service: "*"` for the mesh-wide
    /// defaults); returns the revision it took effect at.
    pub async fn apply_authorization(
        &self,
        policy: &AuthorizationPolicy,
    ) -> Result<u64, ClientError> {
        let path = format!("/v1/authorizations/{}", segment(&policy.service));
        let reply: RevisionReply = self
            .call(Method::PUT, path, Some(json_body(policy)?))
            .await?;
        Ok(reply.revision)
    }

    pub async fn authorization(&self, service: &str) -> Result<AuthorizationPolicy, ClientError> {
        let path = format!("/v1/authorizations/{}", segment(service));
        self.call(Method::GET, path, None)
            .await
            .map_err(|e| not_found(e, service))
    }

    pub async fn authorizations(&self) -> Result<Vec<AuthorizationPolicy>, ClientError> {
        self.call(Method::GET, "/v1/authorizations".into(), None)
            .await
    }

    pub async fn delete_authorization(&self, service: &str) -> Result<u64, ClientError> {
        let path = format!("/v1/authorizations/{}", segment(service));
        let reply: RevisionReply = self
            .call(Method::DELETE, path, None)
            .await
            .map_err(|e| not_found(e, service))?;
        Ok(reply.revision)
    }
}

impl ControlClient {
    /// Applies (creates or replaces) a gateway route; returns the revision.
    pub async fn apply_route(&self, route: &Route) -> Result<u64, ClientError> {
        let path = format!("/v1/routes/{}", segment(&route.name));
        let reply: RevisionReply = self
            .call(Method::PUT, path, Some(json_body(route)?))
            .await?;
        Ok(reply.revision)
    }

    /// The route named `name` (a 404 names it).
    pub async fn route(&self, name: &str) -> Result<Route, ClientError> {
        self.call(Method::GET, format!("/v1/routes/{}", segment(name)), None)
            .await
    }

    /// Every route, sorted by name.
    pub async fn routes(&self) -> Result<Vec<Route>, ClientError> {
        self.call(Method::GET, "/v1/routes".into(), None).await
    }

    pub async fn delete_route(&self, name: &str) -> Result<u64, ClientError> {
        let path = format!("/v1/routes/{}", segment(name));
        let reply: RevisionReply = self.call(Method::DELETE, path, None).await?;
        Ok(reply.revision)
    }
}

fn not_found(e: ClientError, service: &str) -> ClientError {
    match e {
        ClientError::Api { status: 404, .. } => ClientError::UnknownPolicy {
            service: service.to_string(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ControlConfig, ControlServer};
    use std::net::SocketAddr;

    #[tokio::test]
    async fn apply_read_list_delete_against_a_real_server() {
        let dir = tempfile::tempdir().unwrap();
        let config = ControlConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().to_path_buf(),
            ..ControlConfig::default()
        };
        let server = ControlServer::bind(config).await.unwrap();
        let url = format!("http://{}", server.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        let client = ControlClient::new(&url, None).unwrap();

        let mut p = ServicePolicy::defaults("orders");
        p.retries.attempts = 0;
        assert_eq!(client.apply_policy(&p).await.unwrap(), 1);
        assert_eq!(client.policy("orders").await.unwrap(), p);
        assert_eq!(client.policies().await.unwrap(), vec![p.clone()]);
        match client.policy("other").await {
            Err(ClientError::UnknownPolicy { service }) => assert_eq!(service, "other"),
            other => panic!("expected UnknownPolicy, got {other:?}"),
        }
        // The server's validation still applies to what the client sends.
        p.breaker.failure_rate = 200;
        match client.apply_policy(&p).await {
            Err(ClientError::Api { status: 400, error }) => {
                assert_eq!(error.fields[0].field, "breaker.failureRate");
            }
            other => panic!("expected a 400, got {other:?}"),
        }
        assert_eq!(client.delete_policy("orders").await.unwrap(), 2);
        assert!(matches!(
            client.delete_policy("orders").await,
            Err(ClientError::UnknownPolicy { .. })
        ));
        assert!(client.policies().await.unwrap().is_empty());

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
