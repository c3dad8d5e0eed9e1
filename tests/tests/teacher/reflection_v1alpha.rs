//! gRPC reflection in its older dialect: clients that speak `grpc.reflection.v1alpha` (Python's
//! grpcio-reflection, older grpcurl, Postman, Evans) list and describe `distill.v1.Teacher` as
//! `grpc.reflection.v1` clients do.

use distill_tests::*;
use tonic_reflection::pb::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1alpha_reflection_client_lists_and_describes_the_teacher() {
    let tmp = TempDir::new("reflection-v1alpha");
    fresh_checkpoint(tmp.path(), "mlp:8", &[4], 3);
    let teacher = TeacherProcess::start(tmp.path(), &[] as &[&str]).await;
    let mut reflection = ServerReflectionClient::new(teacher.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol(TEACHER_SERVICE.into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("grpc.reflection.v1alpha.ServerReflection is served")
        .into_inner();
    let first = responses.message().await.expect("a response").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("expected a service list, got {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [TEACHER_SERVICE, "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    let second = responses.message().await.expect("a response").expect("one");
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("expected file descriptors, got {second:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
