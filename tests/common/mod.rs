//! `TestEnv`: a temporary working folder with a copy of the shipped templates and a config file,
//! and helpers that run the built `sunset` binary inside it.

#![allow(dead_code)] // each test binary uses its own subset of the helpers

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch folder per test: `templates/` (a copy of the shipped ones) and `sunset.toml`.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    /// A fresh folder with the shipped templates copied in and a config pointing at them.
    pub fn new() -> TestEnv {
        let env = TestEnv {
            dir: tempfile::tempdir().expect("create temp dir"),
        };
        copy_dir(&shipped_templates(), &env.templates());
        env.write_config("[templates]\ndir = \"templates\"\n");
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The copy of the templates folder.
    pub fn templates(&self) -> PathBuf {
        self.path().join("templates")
    }

    /// A file of the Xiami template copy, e.g. `ar/subject.hbs`.
    pub fn template_file(&self, rel: &str) -> PathBuf {
        self.templates().join("xiami-shutdown").join(rel)
    }

    /// Replaces `sunset.toml`.
    pub fn write_config(&self, toml: &str) {
        fs::write(self.path().join("sunset.toml"), toml).expect("write config");
    }

    /// Writes a file relative to the folder and returns its path.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::write(&path, contents).expect("write file");
        path
    }

    /// Runs `sunset ARGS` in the folder with no `SUNSET__*` variables from the outside.
    pub fn sunset(&self, args: &[&str]) -> Run {
        self.sunset_with_env(args, &[])
    }

    /// Runs `sunset ARGS` with extra environment variables.
    pub fn sunset_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sunset"));
        command.args(args).current_dir(self.path());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SUNSET")) {
            command.env_remove(key);
        }
        command.envs(env.iter().copied());
        Run(command.output().expect("run sunset"))
    }
}

/// The output of one `sunset` run.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().expect("exited, not killed")
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts the exit code, showing both streams when it differs.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code(),
            code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

pub fn shipped_templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).expect("copy file");
        }
    }
}
