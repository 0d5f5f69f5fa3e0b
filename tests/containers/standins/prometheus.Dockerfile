# A local stand-in for prom/prometheus (Docker Hub is out of reach in the test environment): the prometheus
# binary from Debian's package, copied in by tests/containers/images.py, on the Debian base image, with the
# official image's layout: /bin/prometheus, data in /prometheus owned by nobody, running as nobody.
ARG BASE
FROM ${BASE}
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus \
 && chown 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
