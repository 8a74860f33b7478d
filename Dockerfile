# Image for the web server and the workers. The worker must run on a KVM host with the host's
# libvirt socket and sandbox/image directories mounted (see docker-compose.yml).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc pkg-config libvirt-dev libvirt-clients \
      qemu-utils openssh-client ca-certificates curl tmux mount \
      nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir -r requirements.txt
COPY . .
# The terminal page's xterm.js, from npm (no CDN at run time).
RUN bash scripts/vendor-static.sh
ENV PATH=/venv/bin:$PATH DJANGO_SETTINGS_MODULE=config.settings.production
# Throw-away keys: without them the settings would generate real ones into the image.
RUN DJANGO_SECRET_KEY=build-only VSB_CREDENTIALS_KEY=build-only python manage.py collectstatic --noinput -v0
EXPOSE 8080
CMD ["daphne", "-b", "0.0.0.0", "-p", "8080", "config.asgi:application"]
