# The two images of `make image`, for machines with a registry:
#   docker build --target lastcall -t ghcr.io/lastcall-dev/lastcall:v0.1.0 .   (node-agent, injector)
#   docker build --target sidecar  -t ghcr.io/lastcall-dev/sidecar:v0.1.0 .    (the sidecar alone)
# or `make image-docker`. `make image` writes the same images without Docker.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
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
