//! `GetModelInfo`, the health service and server reflection.

use distill_tests::*;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_info_reports_shapes_dtype_and_a_weights_fingerprint() {
    let fx = fixtures();
    let a = TeacherProcess::start(&fx.teacher, &["--max-batch-size", "24"]).await;
    let info = a.info().await;
    assert_eq!(info.name, "teacher");
    assert_eq!(info.input_shape, vec![1, 28, 28]);
    assert_eq!(info.input_dtype, v1::DType::F32 as i32);
    assert_eq!(info.num_logits, 10);
    assert_eq!(info.max_batch_size, 24);
    assert_eq!(info.device, "cpu");
    assert_eq!(
        info.max_message_bytes,
        4 << 20,
        "default: at least tonic's 4 MiB"
    );
    assert_eq!(info.fingerprint.len(), 64);
    assert!(info.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));

    // The training-mode export has the same weights; the other export has different ones.
    let same = TeacherProcess::start(&fx.teacher_train, &[] as &[&str]).await;
    assert_eq!(same.info().await.fingerprint, info.fingerprint);
    drop(same);
    let other = TeacherProcess::start(&fx.teacher_other, &[] as &[&str]).await;
    assert_ne!(other.info().await.fingerprint, info.fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_fingerprint_changes_with_the_weights() {
    let d1 = TempDir::new("teacher-info-a");
    let d2 = TempDir::new("teacher-info-b");
    let c1 = fresh_checkpoint(d1.path(), "mlp:16", &[1, 28, 28], 10);
    let c2 = fresh_checkpoint(d2.path(), "mlp:16", &[1, 28, 28], 10);
    assert_ne!(c1.meta.fingerprint, c2.meta.fingerprint);
    let t1 = TeacherProcess::start(d1.path(), &["--max-batch-size", "4096"]).await;
    let i1 = t1.info().await;
    assert_eq!(i1.fingerprint, c1.meta.fingerprint);
    assert_eq!(i1.version, "epoch 0 step 0");
    // 4096 × (3136 B inputs + 40 B logits + 64 B of its named output h1, 16 f32) + framing,
    // doubled: above tonic's 4 MiB.
    assert_eq!(i1.max_message_bytes, 2 * (4096 * (3176 + 64) + 65536));
    drop(t1);
    let t2 = TeacherProcess::start(d2.path(), &[] as &[&str]).await;
    assert_eq!(t2.info().await.fingerprint, c2.meta.fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let fx = fixtures();
    let teacher = TeacherProcess::start(&fx.teacher, &[] as &[&str]).await;
    let mut health = HealthClient::new(teacher.channel().await);
    for service in ["", TEACHER_SERVICE] {
        let s = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(s, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(teacher.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("distill.v1.Teacher".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"distill.v1.Teacher".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
