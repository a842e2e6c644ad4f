import { lazy, Suspense, useEffect } from 'react';
import { BrowserRouter, Navigate, Route, Routes } from 'react-router-dom';
import { QueryClient, QueryClientProvider, useQuery } from '@tanstack/react-query';
import { CssBaseline, LinearProgress, ThemeProvider } from '@mui/material';
import { theme } from './theme';
import { get } from './api/client';
import { ApiError } from './api/problem';
import type { Me } from './api/types';
import { useAuth } from './store/auth';
import { Layout } from './components/Layout';
import { useLiveEvents } from './live/useLiveEvents';

// One chunk per page (code-split): only the login page and the shell load first.
const LoginPage = lazy(() => import('./pages/LoginPage'));
const DashboardPage = lazy(() => import('./pages/DashboardPage'));
const ClustersPage = lazy(() => import('./pages/ClustersPage'));
const ServicesPage = lazy(() => import('./pages/ServicesPage'));
const MappingsPage = lazy(() => import('./pages/MappingsPage'));
const ForwardsPage = lazy(() => import('./pages/ForwardsPage'));
const RoutesPage = lazy(() => import('./pages/RoutesPage'));
const ProxiesPage = lazy(() => import('./pages/ProxiesPage'));
const CertificatesPage = lazy(() => import('./pages/CertificatesPage'));
const AuditPage = lazy(() => import('./pages/AuditPage'));
const UsersPage = lazy(() => import('./pages/UsersPage'));
const LicensePage = lazy(() => import('./pages/LicensePage'));
const ProfilePage = lazy(() => import('./pages/ProfilePage'));

export const queryClient = new QueryClient({
  defaultOptions: {
    queries: {
      staleTime: 10_000,
      retry: (n, err) => !(err instanceof ApiError) && n < 3,
      refetchOnWindowFocus: true,
    },
  },
});

function Authed() {
  const setMe = useAuth((s) => s.setMe);
  const me = useQuery({ queryKey: ['me'], queryFn: () => get<Me>('/auth/me') });
  useEffect(() => {
    if (me.data) setMe(me.data);
  }, [me.data, setMe]);
  useLiveEvents();
  if (!me.data) return <LinearProgress aria-label="Loading" />;
  const admin = me.data.role === 'admin';
  return (
    <Layout>
      <Suspense fallback={<LinearProgress aria-label="Loading page" />}>
        <Routes>
          <Route path="/" element={<DashboardPage />} />
          <Route path="/clusters" element={<ClustersPage />} />
          <Route path="/services" element={<ServicesPage />} />
          <Route path="/mappings" element={<MappingsPage />} />
          <Route path="/forwards" element={<ForwardsPage />} />
          <Route path="/routes" element={<RoutesPage />} />
          <Route path="/proxies" element={<ProxiesPage />} />
          <Route path="/certificates" element={<CertificatesPage />} />
          {admin && <Route path="/audit" element={<AuditPage />} />}
          {admin && <Route path="/users" element={<UsersPage />} />}
          <Route path="/license" element={<LicensePage />} />
          <Route path="/profile" element={<ProfilePage />} />
          <Route path="/login" element={<Navigate to="/" replace />} />
          <Route path="*" element={<Navigate to="/" replace />} />
        </Routes>
      </Suspense>
    </Layout>
  );
}

function Root() {
  const loggedIn = useAuth((s) => s.tokens !== null);
  if (!loggedIn)
    return (
      <Suspense fallback={<LinearProgress aria-label="Loading" />}>
        <LoginPage />
      </Suspense>
    );
  return <Authed />;
}

export function App() {
  return (
    <ThemeProvider theme={theme}>
      <CssBaseline />
      <QueryClientProvider client={queryClient}>
        <BrowserRouter>
          <Root />
        </BrowserRouter>
      </QueryClientProvider>
    </ThemeProvider>
  );
}
