# syntax=docker/dockerfile:1
# Portcullis: multi-stage, compiled JavaScript and production dependencies only,
# non-root, works with a read-only root filesystem (it writes nothing but stdout).

FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
# Dev dependencies for the TypeScript compiler; no install script is needed.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY src ./src
RUN npx tsc -p tsconfig.build.json

FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only; none of them needs an install script.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY config/portcullis.schema.json config/portcullis.example.yaml ./config/
# A numeric non-root user (Kubernetes runAsNonRoot can verify it).
USER 10001:10001
EXPOSE 8443 9901
# The same command the tests and the benchmark run: bin/portcullis.js serve --config FILE,
# with the young-generation cap the shebang sets (see bin/portcullis.js).
ENTRYPOINT ["node", "--max-semi-space-size=16", "/app/bin/portcullis.js"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.yaml"]
