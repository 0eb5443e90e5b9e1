"""Recipe values that pass a type check but cannot run are refused when the recipe loads, in one line naming the
file (or the ``--set`` override) and the key: names checked against transformers' own enums and signatures, numbers
out of range, a random student's init_config against its architecture's config class. No model is trained here."""

from __future__ import annotations

import sys
import warnings

import pytest
import yaml

from distill import cli
from distill.config import StudentConfig, TrainConfig, load_entry, load_recipe, parse_override
from distill.errors import DistillError
from tests.conftest import ROOT

INIT = "init_config:\n  hidden_size: 64\n  num_attention_heads: 2\n  num_key_value_heads: 2\n"


def student_file(tmp_path, train: str = "", head: str = INIT):
    """A student YAML whose train section holds ``train`` (one 'key: value' per line)."""
    body = "".join(f"  {line}\n" for line in train.splitlines())
    path = tmp_path / "st.yaml"
    path.write_text(head + ("train:\n" + body if body else ""))
    return str(path)


def refused(tmp_path, train: str = "", head: str = INIT) -> str:
    with pytest.raises(DistillError) as exc:
        load_entry("student", student_file(tmp_path, train, head))
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's entry point in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["distill", *args])
    code = 0
    with warnings.catch_warnings():  # main() installs its warning printer; restored on the way out
        warnings.simplefilter("always")  # every warning reaches the printer (the harshest case for "once")
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


# 1. names transformers knows --------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, key, said", [
    ("optim: adamw_typo", "optim", "unknown optimizer 'adamw_typo' (did you mean adamw_torch?)"),
    ("lr_scheduler_type: cosine_typo", "lr_scheduler_type", "unknown scheduler 'cosine_typo' (did you mean cosine?)"),
])
def test_unknown_optimizer_or_scheduler_is_refused_at_load(tmp_path, line, key, said):
    text = refused(tmp_path, line)
    assert text.startswith(f"{tmp_path}/st.yaml: key 'train.{key}': {said}"), text


def test_known_optimizer_and_scheduler_names_load():
    t = TrainConfig(optim="paged_adamw_32bit", lr_scheduler_type="warmup_stable_decay",
                    lr_scheduler_kwargs={"num_decay_steps": 10})
    assert (t.optim, t.lr_scheduler_type) == ("paged_adamw_32bit", "warmup_stable_decay")


# 2. lr_scheduler_kwargs against the schedule function's signature ---------------------------------------------------

@pytest.mark.parametrize("lines, key, said", [
    ("lr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr_ratee: 0.1}", "min_lr_ratee",
     "not a parameter of the cosine_with_min_lr schedule (get_cosine_with_min_lr_schedule_with_warmup) (did you mean "
     "min_lr_rate?); it takes: num_cycles, last_epoch, min_lr, min_lr_rate"),
    ("lr_scheduler_type: constant\nlr_scheduler_kwargs: {min_lr_rate: 0.1}", "min_lr_rate",
     "not a parameter of the constant schedule"),  # get_scheduler gives constant schedules no kwargs at all
    ("lr_scheduler_type: warmup_stable_decay", "num_decay_steps", "the warmup_stable_decay schedule (get_wsd_schedule)"
     " requires it"),
    ("lr_scheduler_type: reduce_lr_on_plateau\nlr_scheduler_kwargs: {patiense: 2}", "patiense",
     "(did you mean patience?)"),  # **kwargs handed to ReduceLROnPlateau: checked against its parameters
])
def test_scheduler_kwargs_are_checked_against_the_schedule(tmp_path, lines, key, said):
    text = refused(tmp_path, lines)
    assert f"st.yaml: key 'train.lr_scheduler_kwargs.{key}': " in text and said in text, text


def test_scheduler_kwargs_the_schedule_takes_load():
    assert TrainConfig(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1})
    assert TrainConfig(lr_scheduler_type="cosine", lr_scheduler_kwargs={"num_cycles": 0.25})
    assert TrainConfig(lr_scheduler_type="reduce_lr_on_plateau", lr_scheduler_kwargs={"patience": 2})


# 3. numbers out of range ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["logging_steps: 0", "logging_steps: -3", "threads: -1", "threads: 0",
                                  "max_grad_norm: -1", "weight_decay: -0.5", "max_steps: 0", "max_steps: -5"])
def test_out_of_range_training_numbers_are_refused(tmp_path, line):
    key = line.split(":")[0]
    assert f"st.yaml: key 'train.{key}': " in refused(tmp_path, line)


def test_wrapped_packing_is_refused_because_it_cuts_traces(tmp_path):
    """TRL's wrapped packing cuts traces at bin edges (losing their answer and EOS) and lets them attend to each
    other; the strategies that keep traces whole still load."""
    text = refused(tmp_path, "packing: true\npacking_strategy: wrapped")
    assert text.startswith(f"{tmp_path}/st.yaml: key 'train.packing_strategy': wrapped packing cuts traces"), text
    assert text.endswith("use bfd"), text
    for strategy in ("bfd", "bfd_split"):
        assert TrainConfig(packing=True, packing_strategy=strategy).packing_strategy == strategy


def test_packing_with_gkd_is_refused(tmp_path):
    """GKD trains unpacked prompt/completion pairs; with packing on, the run silently trained unpacked while its
    settings recorded padding-free varlen attention."""
    text = refused(tmp_path, "packing: true\ndistill_method: gkd")
    assert "packing with distill_method gkd" in text and text.endswith("set packing: false"), text


def test_max_steps_default_and_meaningful_values_load():
    assert TrainConfig().max_steps == -1  # -1: train num_train_epochs
    assert TrainConfig(max_steps=1).max_steps == 1
    assert TrainConfig(max_grad_norm=0, threads=None, weight_decay=0).max_grad_norm == 0  # 0: clipping off


# 4. report_to ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["[mlflowx]", "mlflowx", "[tensorboard, wandbb]"])
def test_unknown_tracker_is_refused(tmp_path, value):
    text = refused(tmp_path, f"report_to: {value}")
    assert "st.yaml: key 'train.report_to': unknown tracker" in text and "mlflow" in text


def test_trackers_transformers_integrates_load():
    for value in ("auto", "none", "mlflow", ["mlflow"], ["tensorboard", "wandb"]):
        assert TrainConfig(report_to=value).report_to == value


# 5. init_config against the architecture's config class -----------------------------------------------------------

@pytest.mark.parametrize("changed, key, said", [
    ({"hidden_sizee": 32}, "hidden_sizee", "not a setting of Qwen2Config (did you mean hidden_size?)"),
    ({"num_attention_heads": 3}, "num_attention_heads", "hidden_size 64 is not divisible by num_attention_heads 3"),
    ({"hidden_size": "big"}, "hidden_size", "expected int, got str"),
    ({"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 4}, "num_key_value_heads",
     "num_attention_heads 6 is not a multiple of num_key_value_heads 4"),
    ({"num_hidden_layers": 0}, "num_hidden_layers", "must be a positive integer"),
    ({"hidden_act": "gelux"}, "hidden_act", "unknown activation 'gelux'"),
    ({"eos_token_id": 3}, "eos_token_id", "set from the student's tokenizer"),
])
def test_bad_init_config_is_refused_naming_the_key(tmp_path, changed, key, said):
    init = {"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2, **changed}
    text = refused(tmp_path, head=yaml.safe_dump({"init_config": init}))
    assert f"st.yaml: key 'init_config.{key}': " in text and said in text, text


def test_init_config_is_checked_against_the_chosen_architecture(tmp_path):
    text = refused(tmp_path, head="architecture: llama\n" + INIT + "  use_sliding_window: true\n")
    assert "key 'init_config.use_sliding_window': not a setting of LlamaConfig" in text  # a Qwen2 setting


def test_valid_init_config_loads_with_vocab_size_and_head_dim():
    """vocab_size is what `distill student plan` asks a random student for; rope_theta is consumed by the config
    (it becomes rope_parameters); head_dim is read by the modeling code."""
    cfg = StudentConfig(init_config={"hidden_size": 64, "num_attention_heads": 3, "head_dim": 16, "vocab_size": 300,
                                     "rope_theta": 1e4, "num_key_value_heads": 1})
    assert cfg.init_config["vocab_size"] == 300


# 6. base and init_config ------------------------------------------------------------------------------------------

def test_base_and_init_config_together_are_refused(tmp_path):
    text = refused(tmp_path, head="base: some/model\n" + INIT)
    assert "st.yaml: key 'init_config': " in text and "either base" in text and "not both" in text


def test_base_set_over_a_random_student_names_the_override():
    with pytest.raises(DistillError, match=r"^--set student\.base=some/model, applied to .*: key 'init_config': "
                                           r".*not both"):
        load_recipe("tiny", ["student.base=some/model"])
    assert load_recipe("tiny", ["student.base=some/model", "student.init_config=null"]).student.base == "some/model"


# 7. errors caused by an override name it ---------------------------------------------------------------------------

def test_an_overrides_typo_names_the_override_not_the_file():
    """Each names the override first, then the file it was applied to (the key in the message is relative to it)."""
    with pytest.raises(DistillError) as exc:
        load_recipe("tiny", ["student.train.max_stepz=3"])
    assert str(exc.value) == (f"--set student.train.max_stepz=3, applied to {ROOT}/students/tiny-arith-student.yaml: "
                              "key 'train.max_stepz': Extra inputs are not permitted")
    with pytest.raises(DistillError, match=r"^--set seed=abc, applied to .*recipes/tiny\.yaml: key 'seed': "):
        load_recipe("tiny", ["seed=abc"])  # a key of the run recipe itself
    with pytest.raises(DistillError, match=r"^--set train\.optim=adamw_typo, applied to .*: key 'train\.optim': "):
        load_entry("student", "tiny-arith-student", [(*parse_override(t), t) for t in ["train.optim=adamw_typo"]])


def test_an_override_that_makes_a_file_value_invalid_is_named():
    """The file's min_lr_rate is right for its cosine_with_min_lr; the override's constant schedule takes none."""
    with pytest.raises(DistillError, match=r"^--set student\.train\.lr_scheduler_type=constant, applied to .*: "
                                           r"key 'train\.lr_scheduler_kwargs\.min_lr_rate': "):
        load_recipe("tiny", ["student.train.lr_scheduler_type=constant"])


def test_a_file_error_is_still_blamed_on_the_file_beside_unrelated_overrides(tmp_path):
    path = student_file(tmp_path, "optim: adamw_typo")
    with pytest.raises(DistillError, match=rf"^{tmp_path}/st\.yaml: key 'train\.optim': "):
        load_entry("student", path, [(*parse_override(t), t) for t in ["train.logging_steps=5"]])


@pytest.mark.parametrize("text, problem", [("=3", "no key before '='"), ("student..train=3", "an empty key"),
                                           ("student.train.=3", "an empty key")])
def test_malformed_overrides_are_refused(text, problem):
    with pytest.raises(DistillError, match=rf"^--set: override '{text}' is malformed \({problem}"):
        parse_override(text)
    with pytest.raises(DistillError, match="is malformed"):
        load_recipe("tiny", [text])


def test_cli_override_error_is_one_line_naming_the_override(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "student", "plan", "tiny-arith-student",
                              "--set", "train.max_stepz=3")
    assert code == 2 and out == ""
    assert err == (f"error: --set train.max_stepz=3, applied to {ROOT}/students/tiny-arith-student.yaml: "
                   "key 'train.max_stepz': Extra inputs are not permitted\n")


# 8. student plan --gpu-memory-gib ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_plan_refuses_a_gpu_memory_that_is_not_positive(monkeypatch, capsys, value):
    code, out, err = run_main(monkeypatch, capsys, "student", "plan", "tiny-arith-student",
                              "--set", "init_config.vocab_size=300", f"--gpu-memory-gib={value}")
    assert code == 2 and out == ""
    assert err == f"error: --gpu-memory-gib: must be a positive number of GiB, not {float(value):g}\n"


# 9. warnings: one line each, each distinct message once -------------------------------------------------------------

def test_cli_prints_each_warning_once_on_one_line(monkeypatch, capsys):
    def noisy_app() -> None:
        def site_a():
            warnings.warn("the recipe asks for bf16 but this machine has no bf16 GPU", RuntimeWarning, stacklevel=2)

        def site_b():
            warnings.warn("the recipe asks for bf16 but this machine has no bf16 GPU", RuntimeWarning, stacklevel=2)

        for _ in range(2):
            site_a()
            site_b()
        warnings.warn("a library's advice\n   over two lines", UserWarning)

    monkeypatch.setattr(cli, "app", noisy_app)
    code, _, err = run_main(monkeypatch, capsys)
    assert code == 0
    assert err.splitlines() == ["warning: the recipe asks for bf16 but this machine has no bf16 GPU",
                                "warning: a library's advice over two lines"], err
