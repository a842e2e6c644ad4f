import { render, screen, waitFor } from '@testing-library/react';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { MemoryRouter } from 'react-router-dom';
import { ThemeProvider } from '@mui/material';
import { theme } from '../theme';
import { useAuth } from '../store/auth';
import ClustersPage from '../pages/ClustersPage';
import ServicesPage from '../pages/ServicesPage';

// The pages render from the API; here fetch answers from a fixed list (the component is real).
function serve(items: unknown[]) {
  vi.stubGlobal(
    'fetch',
    vi.fn(async () => new Response(JSON.stringify({ items, total: items.length, limit: 500, offset: 0 }), { status: 200, headers: { 'content-type': 'application/json' } })),
  );
}

function renderAs(role: 'admin' | 'service-owner' | 'viewer', page: React.ReactNode) {
  useAuth.setState({ tokens: { access: 'x', refresh: 'y' }, me: { id: 1, username: 'u', role } });
  const qc = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  return render(
    <ThemeProvider theme={theme}>
      <QueryClientProvider client={qc}>
        <MemoryRouter>{page}</MemoryRouter>
      </QueryClientProvider>
    </ThemeProvider>,
  );
}

describe('role-aware pages', () => {
  afterEach(() => vi.unstubAllGlobals());
  const cluster = { id: 1, version: 1, name: 'prod', config_version: 3 };
  const service = { id: 4, version: 1, cluster_id: 1, name: 'web', ip_fqdn: 'web.internal', auth_type: 'jwt' };

  it('a viewer sees the data but no edit controls', async () => {
    serve([cluster]);
    renderAs('viewer', <ClustersPage />);
    expect(await screen.findByText('prod')).toBeInTheDocument();
    expect(screen.queryByRole('button', { name: /new cluster/i })).toBeNull();
    expect(screen.queryByRole('button', { name: /^edit$/i })).toBeNull();
    expect(screen.queryByRole('button', { name: /delete/i })).toBeNull();
    expect(screen.queryByRole('button', { name: /rotate key/i })).toBeNull();
  });
  it('an admin gets create, edit, delete and rotate', async () => {
    serve([cluster]);
    renderAs('admin', <ClustersPage />);
    expect(await screen.findByText('prod')).toBeInTheDocument();
    expect(screen.getByRole('button', { name: /new cluster/i })).toBeInTheDocument();
    expect(screen.getByRole('button', { name: /^edit$/i })).toBeInTheDocument();
    expect(screen.getByRole('button', { name: /rotate key/i })).toBeInTheDocument();
  });
  it('a service owner creates services but not clusters', async () => {
    serve([service]);
    renderAs('service-owner', <ServicesPage />);
    await waitFor(() => expect(screen.getAllByText('web').length).toBeGreaterThan(0));
    expect(screen.getByRole('button', { name: /new service/i })).toBeInTheDocument();
    serve([cluster]);
    renderAs('service-owner', <ClustersPage />);
    expect(screen.queryByRole('button', { name: /new cluster/i })).toBeNull();
  });
});
