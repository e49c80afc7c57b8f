"""The ``fdq`` command line and the ``fdq-deploy`` / ``fdq-profile`` programs: each command's own
``register`` builds its parser (:mod:`fdq.host.commands`); here they are only put together and run."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from fdq.host import compare, history, quantize, train
from fdq.host.commands import (deploy, detect, evaluate, export, fdq_parser, import_, profile, program_parser, run_program,
                               zoo)

COMMANDS = (zoo, import_, detect, evaluate, quantize, compare, history, train, export, deploy, profile)  # fdq --help lists them so


def build_parser() -> argparse.ArgumentParser:
    return fdq_parser(command.register for command in COMMANDS)


def deploy_parser() -> argparse.ArgumentParser:
    return program_parser(deploy.register, "fdq-deploy")


def profile_parser() -> argparse.ArgumentParser:
    return program_parser(profile.register, "fdq-profile")


def main(argv: Optional[List[str]] = None) -> int:
    return run_program(build_parser(), argv)


def deploy_main(argv: Optional[List[str]] = None) -> int:
    return run_program(deploy_parser(), argv)


def profile_main(argv: Optional[List[str]] = None) -> int:
    return run_program(profile_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
