#!/usr/bin/env bash
# Build the MinIO server used by the S3 store tests and benchmarks into ~/.cache/kvol/bin.
# MinIO publishes no tagged Go module versions, so a pseudo-version pins one commit.
# Its go.mod has no replace directives, so a plain `go install` works.
source "$(dirname "$0")/lib.sh"

MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
go_install minio "github.com/minio/minio@$MINIO_VERSION" -trimpath -ldflags="-s -w"
