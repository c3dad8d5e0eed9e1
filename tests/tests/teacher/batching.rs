//! Concurrent streams are merged into shared forward passes and each gets its own logits back.

use distill_tests::*;
use std::sync::Arc;

const STREAMS: usize = 16;
const BATCHES: u64 = 3;
const BATCH: i64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_streams_get_their_own_logits_from_merged_forward_passes() {
    let fx = fixtures();
    // A 50 ms window: requests arriving together are merged (a full batch is cut at once).
    let teacher = TeacherProcess::start(
        &fx.teacher,
        &["--max-batch-size", "256", "--max-batch-delay-us", "50000"],
    )
    .await;
    let barrier = Arc::new(tokio::sync::Barrier::new(STREAMS));
    let mut tasks = Vec::new();
    for s in 0..STREAMS {
        // Half the streams share a connection, half have their own.
        let mut client = teacher.client().await;
        let barrier = barrier.clone();
        let model = fx.teacher.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = LogitsStream::open(&mut client).await;
            let inputs: Vec<tch::Tensor> = (0..BATCHES)
                .map(|b| random_inputs(BATCH, &[1, 28, 28]) + (s as f64 * 10.0 + b as f64))
                .collect();
            let wants: Vec<tch::Tensor> = inputs
                .iter()
                .map(|x| torchscript_forward(&model, x))
                .collect();
            let requests: Vec<v1::LogitsRequest> = (0..)
                .zip(&inputs)
                .map(|(b, x)| request(s as u64 * 100 + b, x))
                .collect();
            drop(inputs);
            barrier.wait().await;
            for req in requests {
                stream.send(req).await;
            }
            stream.close_send();
            let mut merged = Vec::new();
            let mut seen = Vec::new();
            while let Some(resp) = stream.recv().await {
                let resp = resp.expect("no stream error");
                let b = (resp.batch_id - s as u64 * 100) as usize;
                assert!(
                    b < BATCHES as usize,
                    "stream {s} got batch id {}",
                    resp.batch_id
                );
                // Merged and unmerged forward passes sum in different orders (GEMM blocking
                // follows the batch size), so float32 results differ in the last digits of
                // logits this large (inputs offset by up to 150): 1e-5 of their scale, where a
                // row answered for other samples would be off by the whole scale.
                let diff = max_abs_diff(&dense(&resp), &wants[b]);
                let scale = wants[b].abs().max().double_value(&[]).max(1.0);
                assert!(
                    diff <= 1e-5 * scale,
                    "stream {s} batch {b}: max |diff| = {diff}, logits up to {scale}"
                );
                let t = resp.timing.expect("timing");
                merged.push((t.merged_batch_size, t.merged_requests));
                seen.push(b);
            }
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..BATCHES as usize).collect::<Vec<_>>(),
                "stream {s}"
            );
            merged
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("stream task"));
    }
    assert_eq!(all.len(), STREAMS * BATCHES as usize);
    let merged = all
        .iter()
        .filter(|(size, reqs)| *size as i64 > BATCH && *reqs > 1)
        .count();
    assert!(
        merged > 0,
        "no forward pass merged several requests: {all:?}"
    );
    let largest = all.iter().map(|(size, _)| *size).max().unwrap();
    assert!(largest <= 256);
    assert!(
        largest as i64 >= 4 * BATCH,
        "largest forward pass {largest} samples: {all:?}"
    );
}
