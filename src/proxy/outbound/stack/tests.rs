//! Retry classification and gRPC stream verdicts.

use super::*;

fn resp(status: u16, headers: &[(&'static str, &'static str)]) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    r
}

#[test]
fn retry_classes_know_what_the_app_never_saw() {
    let addr = "10.0.0.1:80".parse().unwrap();
    let connect = Err(MeshError::ConnectFailed {
        addr,
        reason: "refused".into(),
    });
    assert_eq!(
        retry_class(&connect, false),
        Some((RetryOn::ConnectFailure, true))
    );
    let reset = Err(MeshError::UpstreamReset {
        addr,
        reason: "eof".into(),
    });
    assert_eq!(retry_class(&reset, false), Some((RetryOn::Reset, false)));
    assert_eq!(
        retry_class(&Err(MeshError::BreakerOpen("x".into())), false),
        None
    );
    assert_eq!(retry_class(&Ok(resp(200, &[])), true), None);
    assert_eq!(
        retry_class(&Ok(resp(503, &[])), false),
        Some((RetryOn::GatewayError, false))
    );
    // A peer proxy's own failures say whether the app saw the request.
    let shed = Ok(resp(503, &[(MESH_ERROR, "overloaded")]));
    assert_eq!(
        retry_class(&shed, true),
        Some((RetryOn::ConnectFailure, true))
    );
    let refused = Ok(resp(502, &[(MESH_ERROR, "connect-failed")]));
    assert_eq!(
        retry_class(&refused, true),
        Some((RetryOn::ConnectFailure, true))
    );
    let broke = Ok(resp(502, &[(MESH_ERROR, "upstream-reset")]));
    assert_eq!(retry_class(&broke, true), Some((RetryOn::Reset, false)));
    // ...but only from a peer proxy, not from an app's own header.
    assert_eq!(
        retry_class(&shed, false),
        Some((RetryOn::GatewayError, false))
    );
    // gRPC UNAVAILABLE in a trailers-only response has its own class.
    let unavailable = Ok(resp(200, &[("grpc-status", "14")]));
    assert_eq!(
        retry_class(&unavailable, true),
        Some((RetryOn::Unavailable, true))
    );
    assert_eq!(
        retry_class(&Ok(resp(200, &[("grpc-status", "13")])), true),
        None
    );
}

#[test]
fn grpc_streams_fail_on_server_statuses_and_breaks() {
    assert!(!grpc_failed(StreamEnd::Done {
        grpc_status: Some(0)
    }));
    assert!(!grpc_failed(StreamEnd::Done {
        grpc_status: Some(5)
    }));
    assert!(grpc_failed(StreamEnd::Done {
        grpc_status: Some(14)
    }));
    assert!(grpc_failed(StreamEnd::Done { grpc_status: None }));
    assert!(grpc_failed(StreamEnd::Failed));
}
