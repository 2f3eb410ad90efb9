# syntax=docker/dockerfile:1
# The two images of `make image`, for machines with a registry, for any
# platform from any build machine (the Go build runs on the build machine's
# platform and cross-compiles for the target's):
#   docker buildx build --platform linux/amd64,linux/arm64 --target lastcall -t ghcr.io/lastcall-dev/lastcall:v0.2.0 .   (node-agent, injector)
#   docker buildx build --platform linux/amd64,linux/arm64 --target sidecar  -t ghcr.io/lastcall-dev/sidecar:v0.2.0 .    (the sidecar alone)
# or `make image-docker`. `make image` writes the same images without Docker.
# The build image is pinned by digest (golang:1.26, multi-platform index);
# Dependabot (.github/dependabot.yml) proposes its updates.
FROM --platform=$BUILDPLATFORM golang:1.26@sha256:9edf71320ef8a791c4c33ec79f90496d641f306a91fb112d3d060d5c1cee4e20 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/node-agent ./cmd/injector ./cmd/sidecar

# The sidecar of every worker pod: nothing but its static binary.
FROM scratch AS sidecar
COPY --from=build /out/sidecar /usr/local/bin/sidecar
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sidecar"]

# The node agent and the injector, with CA roots for the agent's webhook.
FROM scratch AS lastcall
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/node-agent /out/injector /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/node-agent"]
