//! The `/v1/configs` calls, and a proxy's report of what it delivered.

use super::{json_body, segment, ClientError, ControlClient};
use crate::model::config::{
    ApplyConfig, ConfigApplied, ConfigDocument, ConfigMeta, ConfigVersion, DeliveredConfigs,
    Rollback,
};
use http::Method;

fn base(application: &str, profile: &str) -> String {
    format!("/v1/configs/{}/{}", segment(application), segment(profile))
}

// === impl ControlClient ===

impl ControlClient {
    /// Applies `doc`: a new version when its content changed.
    pub async fn apply_config(
        &self,
        doc: &ConfigDocument,
        message: Option<&str>,
    ) -> Result<ConfigApplied, ClientError> {
        let body = ApplyConfig {
            document: serde_json::to_value(doc)
                .map_err(|e| ClientError::Decode(format!("encoding the document: {e}")))?,
            message: message.map(str::to_string),
        };
        let path = base(&doc.application, &doc.profile);
        self.call(Method::PUT, path, Some(json_body(&body)?)).await
    }

    /// One version (`None`: the latest); secret values only with `secrets`
    /// (and a caller allowed them).
    pub async fn config(
        &self,
        application: &str,
        profile: &str,
        version: Option<u64>,
        secrets: bool,
    ) -> Result<ConfigVersion, ClientError> {
        let mut path = base(application, profile);
        let mut sep = '?';
        if let Some(v) = version {
            path.push_str(&format!("{sep}version={v}"));
            sep = '&';
        }
        if secrets {
            path.push_str(&format!("{sep}secrets=true"));
        }
        self.call(Method::GET, path, None).await
    }

    pub async fn config_history(
        &self,
        application: &str,
        profile: &str,
    ) -> Result<Vec<ConfigMeta>, ClientError> {
        let path = format!("{}/history", base(application, profile));
        self.call(Method::GET, path, None).await
    }

    /// The latest version of every config.
    pub async fn configs(&self) -> Result<Vec<ConfigMeta>, ClientError> {
        self.call(Method::GET, "/v1/configs".into(), None).await
    }

    pub async fn rollback_config(
        &self,
        application: &str,
        profile: &str,
        to: u64,
        message: Option<&str>,
    ) -> Result<ConfigApplied, ClientError> {
        let body = Rollback {
            to,
            message: message.map(str::to_string),
        };
        let path = format!("{}/rollback", base(application, profile));
        self.call(Method::POST, path, Some(json_body(&body)?)).await
    }

    /// `PUT /v1/proxies/{id}/configs`.
    pub async fn delivered(
        &self,
        proxy: &str,
        report: &DeliveredConfigs,
    ) -> Result<DeliveredConfigs, ClientError> {
        let path = format!("/v1/proxies/{}/configs", segment(proxy));
        self.call(Method::PUT, path, Some(json_body(report)?)).await
    }
}
