"""protoc_c_library: compile .proto files with Debian's protoc-c into a cc_library."""

load("@rules_cc//cc:defs.bzl", "cc_library")

def protoc_c_library(name, srcs, deps = [], visibility = None):
    """Generates <file>.pb-c.{c,h} for each .proto in srcs and wraps them in a cc_library.

    Imports are resolved from the workspace root, so a .proto imports another by its
    workspace-relative path (e.g. "services/proto/kv.proto").
    """
    outs_c = [s.replace(".proto", ".pb-c.c") for s in srcs]
    outs_h = [s.replace(".proto", ".pb-c.h") for s in srcs]
    native.genrule(
        name = name + "_gen",
        srcs = srcs + [d + "_protos" for d in deps],
        outs = outs_c + outs_h,
        cmd = "protoc-c --proto_path=. --c_out=$(GENDIR) " + " ".join(["$(location %s)" % s for s in srcs]),
    )
    native.filegroup(name = name + "_protos", srcs = srcs + [d + "_protos" for d in deps])
    cc_library(
        name = name,
        srcs = outs_c,
        hdrs = outs_h,
        deps = deps + ["//bazel:protobuf_c"],
        copts = ["-Wno-unused-parameter"],
        visibility = visibility,
    )
