# Static nodetrust binary on a distroless base: no shell, no package manager.
# The agent runs as root because it writes host files (see hostfiles/README.md).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd cmd
COPY pkg pkg
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
    -o /out/nodetrust ./cmd/nodetrust

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/nodetrust /nodetrust
ENTRYPOINT ["/nodetrust"]
