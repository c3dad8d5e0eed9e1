//! Pairing of teacher logits with their samples when the teacher answers out of order, through
//! the pool (the one streaming path to a teacher).
//!
//! A fake in-process teacher (tonic on 127.0.0.1:0) answers each pair of requests in reverse
//! order (the second before the first), and "knows" each sample: its logits are a one-hot of the
//! sample's label, found through the sample index that the fake reads back from the input. It
//! holds an odd last request until the stream ends, so the plans here have an even number of
//! batches.

use distill_proto::codec;
use distill_proto::v1::teacher_server::{Teacher, TeacherServer};
use distill_proto::v1::{
    self, GetModelInfoRequest, LogitsRequest, LogitsResponse, ModelInfo, logits_response,
};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use student_trainer::data::{Dataset, TextOptions};
use student_trainer::loss::{DistillLoss, LossKind, SparseTail};
use student_trainer::optim::OptimizerConfig;
use student_trainer::schedule::{Position, run_plan};
use student_trainer::soft_targets::TeacherBatch;
use student_trainer::teachers::pool::{Expect, GroupSpec, Pool, PoolOptions, RunTargets};
use student_trainer::training::{self, Job, LabelPolicy, Objective, Start, TrainConfig};
use tch::{Kind, Tensor};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

const CLASSES: i64 = 10;
const N: i64 = 600;

/// Inputs `[N, 1, 28, 28]` of Gaussian noise with `index / 1024` in pixel (0, 0) (exact in f32);
/// labels `i % 10` shuffled by a fixed stride, so that neighbouring indices differ in class.
fn dataset() -> Dataset {
    let _rng = distill_tests::torch_rng();
    tch::manual_seed(11);
    let inputs = Tensor::randn([N, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
    let idx = Tensor::arange(N, (Kind::Float, tch::Device::Cpu)) / 1024.0;
    inputs.narrow(2, 0, 1).narrow(3, 0, 1).view([N]).copy_(&idx);
    let labels: Vec<i64> = (0..N).map(|i| (i * 7 + i / 10) % CLASSES).collect();
    Dataset {
        inputs,
        labels: Tensor::from_slice(&labels),
        num_classes: CLASSES,
        normalization: None,
        tokenizer_fingerprint: None,
    }
}

/// Answers requests two at a time in reverse order; logits are `10 * one_hot(label(index))`.
struct ReversingTeacher {
    labels: Arc<Vec<i64>>,
    /// Pairs answered in reverse order.
    reversed: Arc<AtomicU64>,
}

type LogitsStream = Pin<Box<dyn Stream<Item = Result<LogitsResponse, Status>> + Send>>;

fn answer(labels: &[i64], req: &LogitsRequest) -> LogitsResponse {
    let x = codec::decode(req.inputs.as_ref().expect("inputs")).expect("decodes");
    let b = x.size()[0];
    let index: Vec<f32> = Vec::try_from(x.view([b, -1]).select(1, 0)).expect("index column");
    let mut logits = vec![0f32; (b * CLASSES) as usize];
    for (r, i) in index.iter().enumerate() {
        let i = (i * 1024.0).round() as usize;
        logits[r * CLASSES as usize + labels[i] as usize] = 10.0;
    }
    let t = Tensor::from_slice(&logits).view([b, CLASSES]);
    LogitsResponse {
        batch_id: req.batch_id,
        result: Some(logits_response::Result::Logits(
            codec::encode(&t).expect("encodes"),
        )),
        timing: None,
        outputs: Vec::new(),
        gathered: None,
    }
}

#[tonic::async_trait]
impl Teacher for ReversingTeacher {
    async fn get_model_info(
        &self,
        _: Request<GetModelInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        Ok(Response::new(ModelInfo {
            name: "reversing-fake".into(),
            version: "1".into(),
            fingerprint: "00".into(),
            input_dtype: v1::DType::F32 as i32,
            input_shape: vec![1, 28, 28],
            num_logits: CLASSES,
            max_batch_size: 256,
            device: "cpu".into(),
            max_message_bytes: 0,
            instance_id: String::new(),
            precision: v1::DType::F32 as i32,
            ..ModelInfo::default()
        }))
    }

    type StreamLogitsStream = LogitsStream;

    async fn stream_logits(
        &self,
        request: Request<Streaming<LogitsRequest>>,
    ) -> Result<Response<LogitsStream>, Status> {
        let mut incoming = request.into_inner();
        let labels = self.labels.clone();
        let reversed = self.reversed.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut held: Option<LogitsRequest> = None;
            while let Some(Ok(req)) = incoming.next().await {
                match held.take() {
                    None => held = Some(req),
                    Some(first) => {
                        reversed.fetch_add(1, Ordering::Relaxed);
                        for r in [&req, &first] {
                            if tx.send(Ok(answer(&labels, r))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            if let Some(last) = held {
                let _ = tx.send(Ok(answer(&labels, &last))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves a [`ReversingTeacher`]; returns its URL and its count of reversed pairs.
async fn serve(labels: Vec<i64>) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reversed = Arc::new(AtomicU64::new(0));
    let svc = TeacherServer::new(ReversingTeacher {
        labels: Arc::new(labels),
        reversed: reversed.clone(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), reversed)
}

/// A pool of the one fake replica.
async fn pool(url: &str, batch_size: usize) -> Pool {
    Pool::connect(
        vec![GroupSpec {
            name: "teacher".into(),
            weight: 1.0,
            urls: vec![url.to_string()],
        }],
        PoolOptions::default(),
        Expect {
            sample_shape: vec![1, 28, 28],
            num_classes: CLASSES,
            batch_size,
            tokens: false,
            tokenizer_fingerprint: None,
            hint_output: None,
            top_k: 0,
            image_views: false,
        },
    )
    .await
    .expect("pool of the fake teacher")
}

fn labels_of(d: &Dataset) -> Vec<i64> {
    Vec::try_from(&d.labels).unwrap()
}

#[tokio::test]
async fn reversed_answers_reach_the_loop_in_order_with_their_own_logits() {
    let data = dataset();
    let labels = labels_of(&data);
    let (url, reversed) = serve(labels.clone()).await;
    let mut pool = pool(&url, 32).await;
    let plan: Vec<_> = run_plan(3, N as usize, 32, Position::default(), 2).collect();
    assert_eq!(plan.len() % 2, 0);
    let (tx, mut rx) = mpsc::channel::<TeacherBatch>(4);
    let collect = async {
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.push(b);
        }
        got
    };
    let (stats, got) = tokio::join!(
        pool.run(
            plan.clone(),
            data.inputs.shallow_clone(),
            RunTargets::dense_f32(1.0),
            tx
        ),
        collect
    );
    let stats = stats.unwrap();
    assert_eq!(stats.batches, plan.len() as u64);
    assert_eq!(
        reversed.load(Ordering::Relaxed),
        plan.len() as u64 / 2,
        "the fake did not reorder every pair"
    );
    assert_eq!(got.len(), plan.len());
    for (b, p) in got.iter().zip(&plan) {
        assert_eq!(
            (b.epoch, b.index, &b.indices),
            (p.epoch, p.index, &p.indices)
        );
        let logits = b.targets.as_dense().expect("dense logits");
        let argmax: Vec<i64> = Vec::try_from(logits.argmax(-1, false)).unwrap();
        let expected: Vec<i64> = p.indices.iter().map(|&i| labels[i as usize]).collect();
        assert_eq!(
            argmax, expected,
            "batch {} of epoch {} got another batch's logits",
            p.index, p.epoch
        );
    }
}

/// With `--labels none`, the student learns the labels only through the teacher's logits: if
/// logits were paired with the wrong samples it would stay at chance (the labels are a
/// pseudo-random function of the index, and the inputs carry nothing but the index and noise).
/// Here it must fit the training set well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::await_holding_lock,
    reason = "the generator's guard is held by the test's own thread (block_on) while it feeds the \
              trainer; no task of this runtime takes it"
)]
async fn a_student_trained_only_on_reordered_soft_targets_learns_the_labels() {
    let data = dataset();
    let (url, reversed) = serve(labels_of(&data)).await;
    let mut pool = pool(&url, 50).await;
    let out = std::env::temp_dir().join(format!("student-pairing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let epochs = 40;
    let cfg = TrainConfig {
        device: student_trainer::device::DeviceChoice::Cpu,
        arch: "mlp:256".parse().unwrap(),
        arch_given: true,
        student: None,
        student_logits_output: None,
        init: None,
        data_dir: "unused".into(),
        text: TextOptions::default(),
        images: Default::default(),
        epochs,
        batch_size: 50,
        optimizer: OptimizerConfig::adam(3e-3),
        seed: 1,
        limit: None,
        out: out.clone(),
        resume: false,
        threads: Some(1),
        epoch_eval: false,
        metrics_listen: None,
        stop_after_steps: None,
    };
    let spec = distill_models::ArchSpec {
        arch: cfg.arch.clone(),
        input_shape: vec![1, 28, 28],
        num_classes: CLASSES,
    };
    let plan = run_plan(
        cfg.seed,
        N as usize,
        cfg.batch_size,
        Position::default(),
        epochs,
    );
    let inputs = data.inputs.shallow_clone();
    let eval_data = data.limit(N as usize);
    let (tx, rx) = mpsc::channel(4);
    let job = Job {
        config: cfg.clone(),
        device: tch::Device::Cpu,
        spec,
        objective: Objective::Distill {
            loss: DistillLoss {
                kind: LossKind::Kl,
                temperature: 1.0,
                alpha: 1.0,
                sparse_tail: SparseTail::Bucket,
                jsd_beta: student_trainer::loss::DEFAULT_JSD_BETA,
            },
            labels: LabelPolicy::None,
            teacher_fingerprint: "00".into(),
            batch_ledger: None,
            hint: None,
        },
        train: data,
        test: Some(eval_data),
        start: Start {
            position: Position::default(),
            step: 0,
            checkpoint: None,
            samples_trained: 0,
            hint_stage_optimizer: false,
        },
        stop: Arc::new(AtomicBool::new(false)),
        cache: None,
        metrics: None,
        images: None,
        on_policy: None,
    };
    // The in-process trainer reseeds libtorch's global generator (`cfg.seed`, then each epoch's
    // seed) and sets its thread count (`threads: Some(1)`): it holds the generator from start to
    // join, and the thread count is put back after it.
    let threads = tch::get_num_threads();
    let rng = distill_tests::torch_rng();
    let handle = training::spawn(job, Some(rx)).unwrap();
    pool.run(plan, inputs, RunTargets::dense_f32(1.0), tx)
        .await
        .unwrap();
    assert!(reversed.load(Ordering::Relaxed) > 0);
    let outcome = tokio::task::spawn_blocking(move || training::join(handle))
        .await
        .unwrap()
        .unwrap();
    tch::set_num_threads(threads);
    drop(rng);
    let acc = outcome.test.unwrap().fraction();
    assert!(
        acc > 0.9,
        "training-set accuracy {acc}: soft targets were not paired with their samples"
    );
    std::fs::remove_dir_all(&out).unwrap();
}
