"""The exception classes of clconv, mirroring TensorFlow's error classes.

TensorFlow users catch ``tf.errors.InvalidArgumentError`` and
``tf.errors.UnimplementedError``; clconv raises classes with the same names
and meaning.  They derive from the Python built-ins a non-TF user would
expect, so ``except ValueError`` keeps working too.
"""

from __future__ import annotations


class InvalidArgumentError(ValueError):
    """Bad shapes or values: what TensorFlow reports as InvalidArgumentError."""


class UnimplementedError(NotImplementedError):
    """A valid request this device or op cannot serve, as TF's UnimplementedError."""


class DeviceNotFoundError(LookupError):
    """A device specification that matches no OpenCL device."""


class DeviceUnusableError(DeviceNotFoundError):
    """A device that exists but whose compiler builds no OpenCL program on this
    machine (see clconv.compiler_probe); the message says why and what can run."""


class KernelBuildError(RuntimeError):
    """An OpenCL program failed to build; carries the build log and options."""


class ForkedProcessError(RuntimeError):
    """clconv was used in a process forked after its parent had opened OpenCL.

    OpenCL runtimes keep threads and driver state that a fork() does not copy,
    so any OpenCL call in the child would hang; clconv refuses instead.
    """


class UsageError(Exception):
    """A command-line mistake, reported by ``clconv`` as one line and exit status 2."""
