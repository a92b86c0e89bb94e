"""prune_cache.py on a target directory laid out as cargo lays it out.

Run by `./build.sh test` (python3 -m unittest discover -s tests/tools).
"""

import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HOUR = 3600


class PruneCache(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.target = self.dir.name
        self.now = 1_800_000_000

    def tearDown(self):
        self.dir.cleanup()

    def make(self, relative, hours_ago, directory=False):
        path = os.path.join(self.target, relative)
        os.makedirs(path if directory else os.path.dirname(path), exist_ok=True)
        if not directory:
            with open(path, "w") as file:
                file.write("x" * 100)
        stamp = self.now - hours_ago * HOUR
        os.utime(path, (stamp, stamp))
        return path

    def prune(self, *extra):
        subprocess.run(
            [sys.executable, os.path.join(HERE, "prune_cache.py"), *extra, self.target,
             os.path.join(ROOT, "Cargo.toml")],
            check=True, capture_output=True)

    def test_keeps_the_last_two_builds_of_the_workspace_and_every_dependency(self):
        # Three builds of KCO, a day apart; in each, the library, its unit tests,
        # and a test and a bench both named `admission` (two hashes of one name).
        builds = {}
        for build, hours_ago in enumerate([0, 24, 48]):
            h = f"{build}" * 16
            builds[build] = [
                self.make(f"debug/deps/libkco-{h}.rlib", hours_ago),
                self.make(f"debug/deps/libkco-{h}.rmeta", hours_ago),
                self.make(f"debug/deps/kco-{h}", hours_ago + 0.1),
                self.make(f"debug/deps/admission-{h}", hours_ago + 0.2),
                self.make(f"debug/deps/admission-{'a' * 15}{build}", hours_ago + 0.3),
                self.make(f"debug/.fingerprint/kco-{h}", hours_ago, directory=True),
                self.make(f"debug/incremental/kco-{build}abcdefghijkl", hours_ago,
                          directory=True),
            ]
        # A dependency's old build and an unrelated file are never touched.
        old_dependency = self.make("debug/deps/libserde-" + "9" * 16 + ".rlib", 96)
        unrelated = self.make("debug/deps/notes.txt", 96)

        self.prune()

        for path in builds[0] + builds[1] + [old_dependency, unrelated]:
            self.assertTrue(os.path.exists(path), path)
        for path in builds[2]:
            self.assertFalse(os.path.exists(path), path)

    def test_a_target_triple_directory_is_pruned_too_and_keep_is_honoured(self):
        old = self.make("x86_64-unknown-linux-gnu/release/deps/libkco-" + "1" * 16 + ".rlib", 5)
        new = self.make("x86_64-unknown-linux-gnu/release/deps/libkco-" + "2" * 16 + ".rlib", 0)

        self.prune("--keep", "1")

        self.assertTrue(os.path.exists(new))
        self.assertFalse(os.path.exists(old))

    def test_a_missing_target_directory_is_not_an_error(self):
        self.target = os.path.join(self.dir.name, "absent")
        self.prune()
        self.assertFalse(os.path.exists(self.target))


if __name__ == "__main__":
    unittest.main()
