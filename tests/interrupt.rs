//! Ctrl-C / SIGTERM during a conversion (issue 4, "nothing lost"): the job stops at its next
//! check, returns `Interrupted`, and leaves neither the output nor any temporary file. Its own
//! test binary, because the stop request is process-wide.
use longquant::convert::pipeline::{convert, ConvertError, ConvertOptions, Progress, TypeChoice};
use longquant::convert::FileType;
use std::path::Path;

#[test]
fn an_interrupted_conversion_removes_its_temporary_file() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-natural");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.Q8_0.gguf");
    let opts = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::Q8_0),
        ..ConvertOptions::default()
    };
    // Ask for the stop once the first tensor is under way, as a signal arriving mid-job would.
    let mut tensors_started = 0usize;
    let mut progress = |p: Progress<'_>| {
        if let Progress::TensorDone { .. } = p {
            tensors_started += 1;
            if tensors_started == 3 {
                longquant::interrupt::request();
            }
        }
    };
    let err = convert(&src, &out, &opts, &mut progress).unwrap_err();
    assert!(matches!(err, ConvertError::Interrupted(_)), "{err:?}");
    assert!(
        tensors_started >= 3,
        "the job had started writing before the stop"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "nothing may be left behind, found {left:?}"
    );
}
